//! Session ping: the body of a `ping` comes back in the `pong`.

use serde::{Deserialize, Serialize};

/// Client to server: answer me with the same body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {}

/// Server to client: the reply to a [`Ping`], carrying its body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {}

crate::messages!(Ping => "ping", Pong => "pong");
