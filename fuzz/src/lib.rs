//! What the fuzz targets check beyond "does not panic": a frame that decodes re-encodes to a
//! frame that decodes to the same message.

use std::fmt::Debug;

use chaosnet_proto::{Validate, decode, encode};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Decodes `data` as a `T` frame; when that succeeds, the message must survive a round trip
/// through the encoder. Returns the message.
pub fn roundtrip<T>(data: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + Validate + PartialEq + Debug,
{
    let msg = decode::<T>(data).ok()?;
    let again = encode(&msg).expect("a decoded message encodes within the frame limit");
    let back = decode::<T>(&again).expect("a re-encoded message decodes");
    assert_eq!(back, msg, "the round trip changed the message");
    Some(msg)
}
