//! The one error type of the core. The bindings map each variant onto one Python exception class.

use std::fmt;

/// Everything that can go wrong in the core because of what a user asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// A configuration value is invalid; `path` is the dotted field path.
    Config {
        /// The dotted field path, e.g. `cluster.pools.0.count`.
        path: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// Something does not fit in memory: what it is, how many bytes it needs and how many there are.
    Capacity {
        /// What does not fit (e.g. a model's weights on a pool's GPUs).
        what: String,
        /// Bytes it needs.
        needed_bytes: u64,
        /// Bytes there are.
        available_bytes: u64,
    },
    /// A trace or input table is malformed at a given (1-based) line.
    Trace {
        /// The file or table.
        source: String,
        /// The 1-based line.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The simulation could not proceed (for example a request that can never be scheduled).
    Simulation {
        /// Why the run cannot go on.
        message: String,
    },
    /// A user's policy failed or answered something the engine cannot apply.
    Policy {
        /// What the policy did wrong.
        message: String,
    },
    /// The simulation was cancelled before it finished.
    Interrupted,
}

/// Result alias used across the core.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for a configuration error at `path`.
    pub fn config(path: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config { path: path.into(), message: message.into() }
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { path, message } => write!(f, "{path}: {message}"),
            Error::Capacity { what, needed_bytes, available_bytes } => write!(
                f,
                "{what} does not fit: needs {:.2} GiB ({needed_bytes} bytes), {:.2} GiB ({available_bytes} bytes) available",
                gib(*needed_bytes),
                gib(*available_bytes)
            ),
            Error::Trace { source, line, message } => write!(f, "{source}, line {line}: {message}"),
            Error::Simulation { message } => write!(f, "simulation error: {message}"),
            Error::Policy { message } => write!(f, "policy error: {message}"),
            Error::Interrupted => write!(f, "simulation interrupted"),
        }
    }
}

impl std::error::Error for Error {}
