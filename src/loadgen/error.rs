//! What can stop a load run, as values rather than strings: the drivers return these, and
//! the run's report keeps their words (the JSON summary's `error` is the message).

use std::fmt::Display;
use std::io;

use super::client::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A connection could not be made (refused connections say what to check).
    #[error("cannot connect to {to}: {why}{}", if *.refused { " (is a server listening there?)" } else { "" })]
    Connect { to: String, why: String, refused: bool },
    /// The server ended a connection that still owed replies.
    #[error("the server closed connection {slot} with {in_flight} request(s) in flight")]
    ServerClosed { slot: usize, in_flight: usize },
    /// The server reset a connection (a killed server whose socket held unread requests
    /// resets rather than closes).
    #[error("the server reset connection {slot} with {in_flight} request(s) in flight")]
    ServerReset { slot: usize, in_flight: usize },
    /// The reply stream of a connection cannot be trusted any more.
    #[error("connection {slot}: {source}")]
    Reply {
        slot: usize,
        #[source]
        source: ClientError,
    },
    /// A connection's socket or queue failed.
    #[error("connection {slot} failed: {why}")]
    ConnectionFailed { slot: usize, why: String },
    /// A system call the driver needs failed.
    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The driver cannot run here as configured (its message says what to change).
    #[error("{0}")]
    Setup(String),
    /// Another load thread failed first; its error is the run's.
    #[error("stopped: another load thread failed")]
    Stopped,
    /// A broken promise inside the driver, never a peer's or a user's doing.
    #[error("internal: {0}")]
    Internal(String),
}

impl LoadError {
    pub fn connect(to: impl Display, e: &io::Error) -> LoadError {
        LoadError::Connect {
            to: to.to_string(),
            why: e.to_string(),
            refused: e.kind() == io::ErrorKind::ConnectionRefused,
        }
    }

    /// For `map_err`: a failed system call, named.
    pub fn os(what: &'static str) -> impl FnOnce(io::Error) -> LoadError {
        move |source| LoadError::Os { what, source }
    }

    pub fn failed(slot: usize, why: impl Display) -> LoadError {
        LoadError::ConnectionFailed {
            slot,
            why: why.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words are part of the contract (the JSON summary's `error`, scripts that grep it).
    #[test]
    fn the_messages_say_what_happened_and_what_to_check() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        let e = LoadError::connect("127.0.0.1:9", &refused);
        assert!(
            e.to_string().starts_with("cannot connect to 127.0.0.1:9: "),
            "{e}"
        );
        assert!(e.to_string().ends_with(" (is a server listening there?)"), "{e}");
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(!LoadError::connect("h:1", &reset)
            .to_string()
            .contains("listening"));
        let closed = LoadError::ServerClosed {
            slot: 3,
            in_flight: 2,
        };
        assert_eq!(
            closed.to_string(),
            "the server closed connection 3 with 2 request(s) in flight"
        );
        assert_eq!(
            LoadError::ServerReset {
                slot: 15,
                in_flight: 4
            }
            .to_string(),
            "the server reset connection 15 with 4 request(s) in flight"
        );
        assert_eq!(
            LoadError::Stopped.to_string(),
            "stopped: another load thread failed"
        );
        assert_eq!(
            LoadError::failed(1, "reset").to_string(),
            "connection 1 failed: reset"
        );
        let os = LoadError::os("epoll_wait")(io::Error::from_raw_os_error(libc::EINTR));
        assert!(os.to_string().starts_with("epoll_wait: "), "{os}");
    }
}
