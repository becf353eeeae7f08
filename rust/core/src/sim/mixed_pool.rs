//! Splitwise's mixed pool (Patel et al., ISCA 2024, section IV-C): when the prompt pool is
//! overloaded a token (decode) machine joins the mixed pool and runs new prompts with mixed
//! continuous batching, keeping the decodes of the prompts it ran (no KV transfer); when the
//! token pool is overloaded a prompt (prefill) machine joins it and keeps decoding the requests
//! it prefilled instead of handing them off. A machine leaves the mixed pool, back to its own
//! pool, once it has no work of the other kind left.
//!
//! The rules, exactly (the SimPy reference, tests/reference/mixed_pool.py, follows them too):
//!
//! * Prompt pool overloaded: every prefill instance has at least `prompt_overload_tokens` prompt
//!   tokens queued or being prefilled (its outstanding tokens less the context of the decodes it
//!   keeps). An arriving request is then routed as usual (the router sees it) but goes to a decode
//!   instance instead: one already in the mixed pool whose own prompts (queued or in prefill) are
//!   below the threshold, fewest outstanding tokens first (lowest index on ties); else one not in
//!   the mixed pool, fewest outstanding tokens first; else (every mixed one is loaded too, or the
//!   decode instance can never hold it) the router's pick keeps it.
//! * Token pool overloaded: every decode instance has at least `token_overload_tokens`
//!   outstanding tokens. A request whose prefill ends then keeps decoding on its prefill instance
//!   (a layer-wise transfer is not started early while the token pool is overloaded; one already
//!   under way finishes as usual).
//! * Foreign work: a decode instance's prompts until their first token; a prefill instance's kept
//!   decodes until they finish. An instance joins the mixed pool when it takes its first foreign
//!   request and leaves it at the end of the first iteration after which none is left.

use crate::error::{Error, Result};
use crate::request::Status;
use crate::time::Nanos;
use serde::{Deserialize, Serialize};

use super::cluster::{Cluster, Event, Queue};
use super::Role;

/// When machines move into Splitwise's mixed pool (a cluster's `mixed_pool` in the scenario).
/// A threshold left unset never triggers its direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixedPoolConfig {
    /// The prompt pool is overloaded when every prefill instance has at least this many prompt
    /// tokens queued or in prefill; new prompts then go to decode instances.
    #[serde(default)]
    pub prompt_overload_tokens: Option<u64>,
    /// The token pool is overloaded when every decode instance has at least this many
    /// outstanding tokens; prefilled requests then keep decoding on their prefill instance.
    #[serde(default)]
    pub token_overload_tokens: Option<u64>,
}

/// How the mixed pool served a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MixedService {
    /// Not at all: prefilled on a prefill instance and decoded on a decode instance (or rejected).
    #[default]
    None,
    /// Its prompt ran on a decode instance (in the mixed pool), which then decoded it.
    PromptOnTokenInstance,
    /// It kept decoding on the prefill instance that ran its prompt (in the mixed pool).
    DecodeOnPromptInstance,
}

impl MixedService {
    /// Its name in results (`none`, `prompt_on_token_instance`, `decode_on_prompt_instance`).
    pub fn name(self) -> &'static str {
        match self {
            MixedService::None => "none",
            MixedService::PromptOnTokenInstance => "prompt_on_token_instance",
            MixedService::DecodeOnPromptInstance => "decode_on_prompt_instance",
        }
    }
}

/// One instance's time in the mixed pool over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MixedPoolStats {
    /// Times it joined the mixed pool.
    pub role_switches: u64,
    /// Time spent in the mixed pool, ns.
    pub mixed_ns: u64,
    /// Requests of the other kind it took (prompts on a decode instance, decodes on a prefill one).
    pub foreign_requests: u64,
}

/// The mixed pool's state during a run.
pub(super) struct MixedPool {
    config: MixedPoolConfig,
    prefill: Vec<u32>,
    decode: Vec<u32>,
    /// Per instance: its foreign requests not yet done (empty: not in the mixed pool).
    foreign: Vec<Vec<u32>>,
    /// Per instance: when it last joined the mixed pool.
    since: Vec<Nanos>,
    stats: Vec<MixedPoolStats>,
    /// Per request: how the mixed pool served it.
    service: Vec<MixedService>,
}

impl MixedPool {
    /// The mixed pool of a cluster whose instances have `roles`, serving `requests` requests;
    /// an error unless the cluster has prefill and decode instances and a threshold is set.
    pub(super) fn new(config: &MixedPoolConfig, roles: &[Role], requests: usize) -> Result<Self> {
        let of = |role| (0..roles.len() as u32).filter(|&i| roles[i as usize] == role).collect::<Vec<u32>>();
        let (prefill, decode) = (of(Role::Prefill), of(Role::Decode));
        if prefill.is_empty() || decode.is_empty() {
            return Err(Error::config("cluster.mixed_pool", "needs a pool with role prefill and a pool with role decode (Splitwise's prompt and token pools)"));
        }
        if config.prompt_overload_tokens.is_none() && config.token_overload_tokens.is_none() {
            return Err(Error::config("cluster.mixed_pool", "set prompt_overload_tokens, token_overload_tokens or both"));
        }
        if config.prompt_overload_tokens == Some(0) || config.token_overload_tokens == Some(0) {
            return Err(Error::config("cluster.mixed_pool", "thresholds must be at least 1 token"));
        }
        let n = roles.len();
        Ok(MixedPool { config: config.clone(), prefill, decode, foreign: vec![Vec::new(); n], since: vec![0; n], stats: vec![MixedPoolStats::default(); n], service: vec![MixedService::None; requests] })
    }

    /// `instance` takes foreign request `req` at `now` (joining the mixed pool if it was not in it).
    fn take(&mut self, instance: u32, req: u32, service: MixedService, now: Nanos) {
        let i = instance as usize;
        if self.foreign[i].is_empty() {
            self.stats[i].role_switches += 1;
            self.since[i] = now;
        }
        self.foreign[i].push(req);
        self.stats[i].foreign_requests += 1;
        self.service[req as usize] = service;
    }

    /// Instance `i`'s time in the mixed pool up to `end` (counting a stay not yet over).
    pub(super) fn instance_stats(&self, i: usize, end: Nanos) -> MixedPoolStats {
        let mut s = self.stats[i];
        if !self.foreign[i].is_empty() {
            s.mixed_ns += end.saturating_sub(self.since[i]);
        }
        s
    }

    /// How the mixed pool served each request, in request order.
    pub(super) fn services(&self) -> Vec<MixedService> {
        self.service.clone()
    }
}

impl Cluster<'_> {
    /// Prompt tokens queued or in prefill on instance `i`: its outstanding tokens less the context
    /// of its foreign requests (kept decodes on a prefill instance); on a decode instance, the
    /// prompt tokens of its foreign requests.
    fn pending_prompt_tokens(&self, m: &MixedPool, i: u32) -> u64 {
        let foreign = m.foreign[i as usize].iter().map(|&r| &self.reqs[r as usize]).filter(|r| r.status != Status::Finished);
        if self.instances[i as usize].role == Role::Decode {
            return foreign.filter(|r| r.generated == 0).map(|r| r.prompt as u64).sum();
        }
        let kept: u64 = foreign.map(|r| r.prompt as u64 + r.generated as u64).sum();
        self.instances[i as usize].load().outstanding_tokens.saturating_sub(kept)
    }

    /// Where arriving request `req` goes instead of the router's pick because the prompt pool is
    /// overloaded (a decode instance, now in the mixed pool), if anywhere.
    pub(super) fn mixed_pool_prompt_target(&mut self, req: u32, now: Nanos) -> Option<u32> {
        let m = self.mixed_pool.as_ref()?;
        let threshold = m.config.prompt_overload_tokens?;
        if m.prefill.iter().any(|&p| self.pending_prompt_tokens(m, p) < threshold) {
            return None;
        }
        let outstanding = |d: u32| self.instances[d as usize].load().outstanding_tokens;
        let joined = m.decode.iter().copied().filter(|&d| !m.foreign[d as usize].is_empty() && self.pending_prompt_tokens(m, d) < threshold).min_by_key(|&d| (outstanding(d), d));
        let target = joined.or_else(|| m.decode.iter().copied().filter(|&d| m.foreign[d as usize].is_empty()).min_by_key(|&d| (outstanding(d), d)))?;
        if self.instances[target as usize].reject_reason(&self.reqs[req as usize]).is_some() {
            return None;
        }
        self.mixed_pool.as_mut().expect("checked above").take(target, req, MixedService::PromptOnTokenInstance, now);
        Some(target)
    }

    /// Whether the token pool is overloaded: every decode instance has at least the threshold's
    /// outstanding tokens (never without a mixed pool or a token threshold).
    pub(super) fn token_pool_overloaded(&self) -> bool {
        let Some(m) = self.mixed_pool.as_ref() else { return false };
        let Some(threshold) = m.config.token_overload_tokens else { return false };
        m.decode.iter().all(|&d| self.instances[d as usize].load().outstanding_tokens >= threshold)
    }

    /// Request `req`'s prefill just ended on its prefill instance: when the token pool is
    /// overloaded it keeps decoding there (the instance joins the mixed pool) and true is returned;
    /// false leaves it to the handoff.
    pub(super) fn mixed_pool_keeps_decode(&mut self, req: u32, now: Nanos, queue: &mut Queue) -> bool {
        if !self.token_pool_overloaded() {
            return false;
        }
        let r = &mut self.reqs[req as usize];
        let here = r.instance;
        let blocks = r.blocks;
        if self.instances[here as usize].accept(req, r, blocks) {
            queue.push(now, Event::Wake { instance: here });
        }
        self.mixed_pool.as_mut().expect("overloaded implies a mixed pool").take(here, req, MixedService::DecodeOnPromptInstance, now);
        true
    }

    /// The iteration of `idx` ended at `now`: foreign requests that are done (a prompt that has
    /// its first token, a kept decode that finished) leave; with none left, `idx` leaves the
    /// mixed pool.
    pub(super) fn mixed_pool_iteration_ended(&mut self, idx: u32, now: Nanos) {
        let Some(m) = self.mixed_pool.as_mut() else { return };
        let i = idx as usize;
        if m.foreign[i].is_empty() {
            return;
        }
        let reqs = &self.reqs;
        let decode = self.instances[i].role == Role::Decode;
        m.foreign[i].retain(|&r| {
            let r = &reqs[r as usize];
            r.status != Status::Finished && !(decode && r.generated > 0)
        });
        if m.foreign[i].is_empty() {
            m.stats[i].mixed_ns += now - m.since[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(prompt: Option<u64>, token: Option<u64>) -> MixedPoolConfig {
        MixedPoolConfig { prompt_overload_tokens: prompt, token_overload_tokens: token }
    }

    #[test]
    fn needs_prompt_and_token_pools_and_a_threshold() {
        let roles = [Role::Prefill, Role::Decode];
        assert!(MixedPool::new(&config(Some(1), None), &roles, 3).is_ok());
        let err = MixedPool::new(&config(Some(1), None), &[Role::Mixed, Role::Decode], 3).err().unwrap().to_string();
        assert!(err.contains("cluster.mixed_pool") && err.contains("role prefill"), "{err}");
        let err = MixedPool::new(&config(None, None), &roles, 3).err().unwrap().to_string();
        assert!(err.contains("prompt_overload_tokens"), "{err}");
        assert!(MixedPool::new(&config(Some(0), Some(5)), &roles, 3).is_err());
    }

    #[test]
    fn joining_counts_one_switch_per_stay_and_the_time_in_the_pool() {
        let mut m = MixedPool::new(&config(Some(1), Some(1)), &[Role::Prefill, Role::Decode], 4).unwrap();
        m.take(1, 0, MixedService::PromptOnTokenInstance, 100);
        m.take(1, 1, MixedService::PromptOnTokenInstance, 150);
        assert_eq!(m.instance_stats(1, 400), MixedPoolStats { role_switches: 1, mixed_ns: 300, foreign_requests: 2 });
        m.foreign[1].clear();
        m.stats[1].mixed_ns += 500 - m.since[1];
        m.take(1, 2, MixedService::PromptOnTokenInstance, 600);
        assert_eq!(m.instance_stats(1, 700), MixedPoolStats { role_switches: 2, mixed_ns: 500, foreign_requests: 3 });
        assert_eq!(m.instance_stats(0, 700), MixedPoolStats::default());
        assert_eq!(m.services(), vec![MixedService::PromptOnTokenInstance, MixedService::PromptOnTokenInstance, MixedService::PromptOnTokenInstance, MixedService::None]);
    }

    #[test]
    fn config_reads_the_scenario_fields_and_refuses_others() {
        let c: MixedPoolConfig = serde_json::from_str(r#"{"prompt_overload_tokens": 4096, "token_overload_tokens": null}"#).unwrap();
        assert_eq!(c, config(Some(4096), None));
        assert!(serde_json::from_str::<MixedPoolConfig>(r#"{"prompt_queue": 1}"#).is_err());
    }
}
