//! Unit tests of a speculative verify chunk's attention under the engine's `verify_query_tile`:
//! the tile's FLOPs over the chunk's keys, the one-SM floor of its longest block, by hand.

use super::super::fixtures::*;
use super::super::{BatchShape, CostModel, Op, VerifyChunks};
use crate::calibration::Efficiency;
use crate::model::fixtures::llama3_8b;

/// Llama-3-8B on one H100 at peak rates, with `tile` query rows per verify chunk and query head.
fn model(tile: Option<u32>) -> CostModel {
    CostModel::new(llama3_8b(), h100(), Efficiency { verify_query_tile: tile, ..ideal() }, 1).unwrap()
}

/// A verify pass of `n` sequences, each 3 query tokens (2 drafts) after `cached` tokens, beside
/// a 256-token prompt: its shape and chunks.
fn verify_pass(n: usize, cached: u64) -> (BatchShape, VerifyChunks) {
    let mut shape = BatchShape::default();
    let mut chunks = VerifyChunks::default();
    shape.add_prefill(256, 0, true);
    for _ in 0..n {
        chunks.add(&mut shape, 3, cached);
    }
    (shape, chunks)
}

/// The prefill attention operator of `cm` over `(shape, chunks)`.
fn prefill_attention(cm: &CostModel, (shape, chunks): &(BatchShape, VerifyChunks)) -> super::OpCost {
    let mut all = Vec::new();
    cm.for_each_op_with(shape, chunks, |c| all.push(c));
    op(&all, Op::PrefillAttention)
}

#[test]
fn a_verify_chunk_computes_the_whole_tile_over_its_keys_per_query_head() {
    let pass = verify_pass(8, 997);
    let (plain, tiled) = (prefill_attention(&model(None), &pass), prefill_attention(&model(Some(128)), &pass));
    // Per layer (32 layers), query width 32 x 128 = 4096: the prompt's causal pairs
    // 256 x 257 / 2, each chunk's 3 x 997 + (1 + 2 + 3) without the tile, and 128 rows over its
    // 1000 keys with it.
    let prompt = 256.0 * 257.0 / 2.0;
    assert!(close(plain.flops, 32.0 * 4.0 * 4096.0 * (prompt + 8.0 * (3.0 * 997.0 + 6.0))));
    assert!(close(tiled.flops, 32.0 * 4.0 * 4096.0 * (prompt + 8.0 * 128.0 * 1000.0)));
    // The bytes (queries, keys and values read once per KV head) do not change.
    assert!(close(tiled.bytes, plain.bytes));
    // A one-row tile would count fewer pairs than the chunks' own: they keep theirs.
    assert!(close(prefill_attention(&model(Some(1)), &pass).flops, plain.flops));
    // Without verify chunks the tile changes nothing.
    let mut prompt_only = BatchShape::default();
    prompt_only.add_prefill(256, 0, true);
    assert_eq!(model(Some(128)).iteration_seconds(&prompt_only), model(None).iteration_seconds(&prompt_only));
}

#[test]
fn one_sequence_at_a_long_context_waits_for_its_blocks_on_single_sms() {
    // One chunk at 8,000 cached: 32 blocks (one per query head) on 132 SMs, each computing
    // 128 rows over 8,003 keys of 128 dimensions: 4 x 128 x 8,003 x 128 FLOPs at one SM's
    // 989.4 / 132 TFLOP/s, per layer; that floor is the operator's time.
    let pass = verify_pass(1, 8000);
    let tiled = prefill_attention(&model(Some(128)), &pass);
    let floor = 4.0 * 128.0 * 8003.0 * 128.0 / (989.4e12 / 132.0);
    assert!(close(tiled.seconds, 32.0 * floor), "{} against {}", tiled.seconds, 32.0 * floor);
    // Without the tile the same operator takes its bytes' time at the whole GPU's bandwidth
    // (the prompt's and the chunk's 8,259 keys and values, ~10 us a layer): several times less.
    assert!(tiled.seconds > 5.0 * prefill_attention(&model(None), &pass).seconds);
}
