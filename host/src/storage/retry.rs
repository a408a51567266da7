//! [`RetryPolicy`]: how every request to object storage is retried and timed out, set once for
//! a [`Storage`](super::Storage) and handed to each backend's builder (object_store's
//! `RetryConfig` and `ClientOptions`), never per call.

use std::time::Duration;

use object_store::{BackoffConfig, ClientOptions, RetryConfig};

/// Retries with exponential back-off: a failed request (connection refused or reset, a timeout,
/// a 5xx or 429 answer) is retried after `initial_backoff`, then after waits that grow by up to
/// twice each time (randomised, so that many processes do not retry in step), capped at
/// `max_backoff`, until `max_retries` retries or `time_limit` since the first try, whichever
/// comes first; then the request fails with an error that names the URL and this policy.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub max_retries: usize,
    /// The first wait; each next one is up to twice the last, up to `max_backoff`.
    pub initial_backoff: Duration,
    /// The longest wait between two tries.
    pub max_backoff: Duration,
    /// No retry starts later than this after the first try of a request.
    pub time_limit: Duration,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for one request, its body included (a whole-object download of a large
    /// shard is one request: keep this well above its transfer time).
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    /// Ten retries from 100 ms to 15 s apart, within three minutes; 5 s to connect, 10 minutes
    /// per request.
    fn default() -> Self {
        RetryPolicy {
            max_retries: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            time_limit: Duration::from_secs(180),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// object_store's form of the retry part.
    pub(crate) fn retry_config(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: self.initial_backoff,
                max_backoff: self.max_backoff,
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.time_limit,
        }
    }

    /// object_store's client options with this policy's timeouts.
    pub(crate) fn client_options(&self) -> ClientOptions {
        ClientOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout)
    }

    /// What was tried, for an error after the retries: "up to 10 retries, back-off from 100ms
    /// growing to 15s, within 180s per request (...)".
    pub fn describe(&self) -> String {
        format!(
            "up to {} retries, back-off from {:?} growing to {:?}, within {:?} per request \
             ({:?} to connect, {:?} per try)",
            self.max_retries,
            self.initial_backoff,
            self.max_backoff,
            self.time_limit,
            self.connect_timeout,
            self.request_timeout
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_reaches_object_store_and_its_description() {
        let policy = RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            time_limit: Duration::from_secs(2),
            ..RetryPolicy::default()
        };
        let config = policy.retry_config();
        assert_eq!(config.max_retries, 3);
        assert_eq!(config.retry_timeout, Duration::from_secs(2));
        assert_eq!(config.backoff.init_backoff, Duration::from_millis(50));
        assert_eq!(config.backoff.base, 2.0);
        let text = policy.describe();
        assert!(
            text.contains("up to 3 retries") && text.contains("50ms"),
            "{text}"
        );
    }
}
