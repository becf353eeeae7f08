//! Unit tests of token trees' cost: the tree read level by level, the verify pass over every
//! node, the proposer's steps per level and the batch trend against a chain.

use super::tests::{cfg, target};
use super::*;
use crate::cost::speculative_config::AcceptanceRate;
use crate::error::Error;

/// vLLM's `speculative_token_tree` of two candidates per node over two levels (6 nodes).
fn binary_tree() -> Vec<Vec<u32>> {
    vec![vec![0], vec![1], vec![0, 0], vec![0, 1], vec![1, 0], vec![1, 1]]
}

fn tree_cfg(tree: Vec<Vec<u32>>, a: AcceptanceRate) -> SpeculativeConfig {
    SpeculativeConfig { speculative_token_tree: Some(tree.clone()), ..cfg(SpecMethod::Eagle, None, tree.len() as u32, a) }
}

#[test]
fn a_token_tree_is_read_level_by_level_and_bad_trees_name_their_node() {
    assert_eq!(tree_cfg(binary_tree(), AcceptanceRate::Constant(0.7)).tree_levels().unwrap(), vec![2, 6]);
    assert_eq!(tree_cfg(binary_tree(), AcceptanceRate::PerPosition(vec![0.9, 0.6])).class_rates().unwrap()[0].1, vec![0.9, 0.6], "one rate per level");
    let chain = vec![vec![0], vec![0, 0], vec![0, 0, 0]];
    assert_eq!(tree_cfg(chain, AcceptanceRate::Constant(0.7)).tree_levels().unwrap(), vec![1, 2, 3], "a chain is a tree of one child per node");
    let fails = |c: SpeculativeConfig| match c.class_rates() {
        Err(Error::Config { path, message }) => (path, message),
        other => panic!("{other:?}"),
    };
    let a = AcceptanceRate::Constant(0.7);
    // A level whose nodes have different numbers of children: [0] has one, [1] none.
    let (path, message) = fails(tree_cfg(vec![vec![0], vec![1], vec![0, 0]], a.clone()));
    assert_eq!(path, "speculative.speculative_token_tree.2");
    assert!(message.contains("same number of children"), "{message}");
    assert_eq!(fails(tree_cfg(vec![vec![0], vec![1, 0]], a.clone())).0, "speculative.speculative_token_tree.1", "its parent [1] is missing");
    assert_eq!(fails(tree_cfg(vec![vec![0], vec![0]], a.clone())).0, "speculative.speculative_token_tree.1", "listed twice");
    assert_eq!(tree_cfg(vec![vec![1, 0], vec![0], vec![0, 0], vec![1]], a.clone()).tree_levels().unwrap(), vec![2, 4], "in any order, as vLLM sorts them");
    assert_eq!(fails(tree_cfg(vec![vec![0], vec![]], a.clone())).0, "speculative.speculative_token_tree.1", "an empty path");
    assert_eq!(fails(tree_cfg(vec![vec![1]], a.clone())).0, "speculative.speculative_token_tree.0", "ranks start at 0");
    assert_eq!(fails(tree_cfg(binary_tree(), AcceptanceRate::PerPosition(vec![0.9; 6]))).0, "speculative.acceptance_rate", "rates per level, not per node");
    assert_eq!(fails(SpeculativeConfig { num_speculative_tokens: 4, ..tree_cfg(binary_tree(), a.clone()) }).0, "speculative.num_speculative_tokens");
    assert_eq!(fails(SpeculativeConfig { method: SpecMethod::Ngram, ..tree_cfg(binary_tree(), a.clone()) }).0, "speculative.speculative_token_tree");
    assert_eq!(fails(SpeculativeConfig { num_speculative_tokens_per_batch_size: Some(vec![[1, 8, 2]]), ..tree_cfg(binary_tree(), a.clone()) }).0, "speculative.speculative_token_tree");
    // 20 nodes (4 + 16) is past a chain's 16 but a tree may hold up to 64.
    let wide: Vec<Vec<u32>> = (0..4).map(|i| vec![i]).chain((0..4).flat_map(|i| (0..4).map(move |j| vec![i, j]))).collect();
    assert_eq!(tree_cfg(wide, a).tree_levels().unwrap(), vec![4, 20]);
}

#[test]
fn a_tree_verifies_its_nodes_and_its_proposer_drafts_level_by_level() {
    let spec = target();
    let sp = Speculator::build(&tree_cfg(binary_tree(), AcceptanceRate::Constant(0.7)), &spec).unwrap();
    assert_eq!((sp.k(), sp.class_rates(0).len()), (6, 2), "six draft tokens a step over two levels");
    // Granted draft tokens hold whole levels: 2 of 6 nodes is the first level, 5 still one.
    assert_eq!([0, 1, 2, 5, 6].map(|g| sp.depth(g)), [0, 0, 1, 1, 2]);
    let rest = CostModel::build(&spec).unwrap().empty_shape();
    let seqs = [SpecSeq { cached: 999, k: 6 }, SpecSeq { cached: 499, k: 5 }];
    // The target verifies 6 + 1 and 2 + 1 tokens, every one sampled.
    let (v, chunks) = sp.verify_shape(&rest, &seqs);
    assert_eq!((v.prefill_tokens, v.prefill_seqs, v.sampled, chunks.tokens), (10, 2, 10, 10));
    // Step 1: the first pass over both verify chunks, one sample each. Step 2: the deep one runs
    // its first level's 2 nodes after its context and the token just verified, sampling both
    // (each node's children).
    let (p1, c1) = sp.proposal_shape(&rest, &seqs, 1);
    assert_eq!((p1.decode_seqs, p1.prefill_tokens, p1.prefill_seqs, p1.sampled, c1.tokens), (0, 10, 2, 2, 10));
    let (p2, _) = sp.proposal_shape(&rest, &seqs, 2);
    assert_eq!((p2.decode_seqs, p2.prefill_tokens, p2.prefill_kv_tokens, p2.sampled), (0, 2, 1000 + 2, 2));
    assert_eq!(sp.proposal_steps(&rest, &seqs), 2);
}

#[test]
fn a_tree_pays_at_batch_one_and_costs_more_than_a_chain_at_large_batches() {
    // EAGLE-2's and Sequoia's trend: a tree's extra candidates raise the accepted length for a
    // verify pass that, at batch 1, costs about what a decode costs; at large batches its 7
    // query tokens per sequence make the pass compute-bound and the chain wins.
    let spec = target();
    let cm = CostModel::build(&spec).unwrap();
    // The same head; the tree's two candidates per level accept more often than the chain's one.
    let chain = Speculator::build(&cfg(SpecMethod::Eagle, None, 2, AcceptanceRate::Constant(0.6)), &spec).unwrap();
    let tree = Speculator::build(&tree_cfg(binary_tree(), AcceptanceRate::Constant(0.75)), &spec).unwrap();
    let speedup = |sp: &Speculator, batch: u32| {
        let mut plain = cm.empty_shape();
        (0..batch).for_each(|_| plain.add_decode(1024));
        let seqs: Vec<SpecSeq> = (0..batch).map(|_| SpecSeq { cached: 1023, k: sp.k() }).collect();
        cm.iteration_seconds(&plain) * expected_tokens_per_step(sp.class_rates(0)) / sp.step(&cm, &cm.empty_shape(), &seqs).seconds
    };
    let (c1, t1, c256, t256) = (speedup(&chain, 1), speedup(&tree, 1), speedup(&chain, 256), speedup(&tree, 256));
    assert!(t1 > c1 && t1 > 1.5, "batch 1: tree {t1}, chain {c1}");
    assert!(t256 < c256, "batch 256: tree {t256}, chain {c256}");
}
