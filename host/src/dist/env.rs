//! The environment a launcher (torchrun, or a user by hand) gives each process of a
//! distributed run: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT`, `TORCHELASTIC_USE_AGENT_STORE`, `TORCHELASTIC_RESTART_COUNT`.

use anyhow::{anyhow, bail, Result};

/// What torchrun (or a user) put in the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    /// This process's rank, `0..world_size` (`RANK`).
    pub rank: usize,
    /// The number of processes of the run (`WORLD_SIZE`).
    pub world_size: usize,
    /// This process's rank on its node (`LOCAL_RANK`; `rank` when absent).
    pub local_rank: usize,
    /// The number of processes on this node (`LOCAL_WORLD_SIZE`; `world_size` when absent).
    pub local_world_size: usize,
    /// The host of the store (`MASTER_ADDR`; `127.0.0.1` when absent).
    pub master_addr: String,
    /// The port of the store (`MASTER_PORT`; 29500 when absent).
    pub master_port: u16,
    /// Whether torchrun's agent hosts the store, so that every rank connects as a client
    /// (`TORCHELASTIC_USE_AGENT_STORE=True`); otherwise rank 0 hosts it.
    pub agent_store: bool,
    /// How many times torchrun restarted the group (`TORCHELASTIC_RESTART_COUNT`, 0 when
    /// absent). The store keys of each attempt are kept apart with it, since torchrun's agent
    /// store outlives the workers.
    pub restart_count: u32,
}

impl DistEnv {
    /// Reads the process environment: `None` when `WORLD_SIZE` and `RANK` are both absent
    /// (not a distributed run); an error naming the variable when one is missing, malformed
    /// or inconsistent with the others.
    pub fn from_env() -> Result<Option<DistEnv>> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`DistEnv::from_env`], reading variables through `var` (for tests).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>> {
        let (rank, world_size) = match (var("RANK"), var("WORLD_SIZE")) {
            (None, None) => return Ok(None),
            (Some(_), None) => bail!("RANK is set but WORLD_SIZE is not: set both or neither"),
            (None, Some(_)) => bail!("WORLD_SIZE is set but RANK is not: set both or neither"),
            (Some(r), Some(w)) => (parse("RANK", &r)?, parse::<usize>("WORLD_SIZE", &w)?),
        };
        if world_size == 0 {
            bail!("WORLD_SIZE=0: a run has at least one process");
        }
        if rank >= world_size {
            bail!("RANK={rank} is not below WORLD_SIZE={world_size}");
        }
        let local_rank = match var("LOCAL_RANK") {
            Some(v) => parse("LOCAL_RANK", &v)?,
            None => rank,
        };
        let local_world_size = match var("LOCAL_WORLD_SIZE") {
            Some(v) => parse("LOCAL_WORLD_SIZE", &v)?,
            None => world_size,
        };
        if local_world_size == 0 || local_world_size > world_size {
            bail!(
                "LOCAL_WORLD_SIZE={local_world_size} is not between 1 and WORLD_SIZE={world_size}"
            );
        }
        if local_rank >= local_world_size {
            bail!("LOCAL_RANK={local_rank} is not below LOCAL_WORLD_SIZE={local_world_size}");
        }
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".to_string());
        if master_addr.trim().is_empty() {
            bail!("MASTER_ADDR is empty");
        }
        let master_port = match var("MASTER_PORT") {
            Some(v) => parse("MASTER_PORT", &v)?,
            None => 29500,
        };
        let agent_store = match var("TORCHELASTIC_USE_AGENT_STORE").as_deref() {
            None | Some("False") | Some("false") | Some("0") | Some("") => false,
            Some("True") | Some("true") | Some("1") => true,
            Some(other) => bail!("TORCHELASTIC_USE_AGENT_STORE={other}: expected True or False"),
        };
        let restart_count = match var("TORCHELASTIC_RESTART_COUNT") {
            Some(v) => parse("TORCHELASTIC_RESTART_COUNT", &v)?,
            None => 0,
        };
        Ok(Some(DistEnv {
            rank,
            world_size,
            local_rank,
            local_world_size,
            master_addr,
            master_port,
            agent_store,
            restart_count,
        }))
    }
}

fn parse<T: std::str::FromStr>(name: &str, value: &str) -> Result<T> {
    value
        .trim()
        .parse()
        .map_err(|_| anyhow!("{name}={value:?} is not a non-negative integer in range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(vars: &[(&str, &str)]) -> Result<Option<DistEnv>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DistEnv::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn absent_variables_mean_a_single_process_run() {
        assert_eq!(read(&[]).unwrap(), None);
    }

    #[test]
    fn torchrun_variables_are_read() {
        let env = read(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29600"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            env,
            DistEnv {
                rank: 3,
                world_size: 4,
                local_rank: 1,
                local_world_size: 2,
                master_addr: "node0".into(),
                master_port: 29600,
                agent_store: true,
                restart_count: 2,
            }
        );
    }

    #[test]
    fn defaults_fill_what_a_hand_launch_omits() {
        let env = read(&[("RANK", "1"), ("WORLD_SIZE", "2")])
            .unwrap()
            .unwrap();
        assert_eq!(env.local_rank, 1);
        assert_eq!(env.local_world_size, 2);
        assert_eq!(env.master_addr, "127.0.0.1");
        assert_eq!(env.master_port, 29500);
        assert!(!env.agent_store);
    }

    #[test]
    fn errors_name_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("RANK", "0")], "WORLD_SIZE"),
            (&[("WORLD_SIZE", "2")], "RANK"),
            (&[("RANK", "x"), ("WORLD_SIZE", "2")], "RANK=\"x\""),
            (&[("RANK", "2"), ("WORLD_SIZE", "2")], "RANK=2"),
            (
                &[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "70000")],
                "MASTER_PORT",
            ),
            (
                &[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "5")],
                "LOCAL_RANK=5",
            ),
            (
                &[
                    ("RANK", "0"),
                    ("WORLD_SIZE", "2"),
                    ("TORCHELASTIC_USE_AGENT_STORE", "maybe"),
                ],
                "TORCHELASTIC_USE_AGENT_STORE",
            ),
        ];
        for (vars, expected) in cases {
            let err = read(vars).unwrap_err().to_string();
            assert!(err.contains(expected), "{vars:?}: {err}");
        }
    }
}
