//! The wire log: every RPC's method, request and response, secrets redacted.
//!
//! Two places see an RPC: the [`Transport`](crate::Transport) sees the method
//! and the HTTP/2 response, and [`WireCodec`] (which `build.rs` makes every
//! generated client use) sees each message as it is encoded or decoded. Both log
//! at debug level to the tracing target `etcdutil::wire`, and also to stderr
//! once any client was made with `Config::debug` (`ETCD3_DEBUG`), as the Go
//! client's debug switch does for its whole process.

use std::any::{Any, type_name};
use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::proto::etcdserverpb::{
    AuthUserAddRequest, AuthUserChangePasswordRequest, AuthenticateRequest, AuthenticateResponse,
};

/// The tracing target of the wire log.
///
/// ```
/// // e.g. with tracing-subscriber: EnvFilter::new(format!("{}=debug", etcdutil::WIRE_TARGET))
/// assert_eq!(etcdutil::WIRE_TARGET, "etcdutil::wire");
/// ```
pub const WIRE_TARGET: &str = "etcdutil::wire";

static TO_STDERR: AtomicBool = AtomicBool::new(false);

/// Also print the wire log on stderr, for the rest of the process.
pub(crate) fn enable_stderr() {
    TO_STDERR.store(true, Ordering::Relaxed);
}

/// Whether anything would record a wire log line; checked before formatting,
/// so the log costs nothing when it is off.
pub(crate) fn enabled() -> bool {
    TO_STDERR.load(Ordering::Relaxed)
        || tracing::enabled!(target: WIRE_TARGET, tracing::Level::DEBUG)
}

pub(crate) fn log(line: std::fmt::Arguments<'_>) {
    if TO_STDERR.load(Ordering::Relaxed) {
        eprintln!("{WIRE_TARGET}: {line}");
    }
    tracing::debug!(target: WIRE_TARGET, "{line}");
}

/// `etcdserverpb.PutRequest` rather than the Rust path of the generated type.
fn message_name<T>() -> String {
    let path = type_name::<T>();
    let mut parts = path.rsplit("::");
    let name = parts.next().unwrap_or(path);
    match parts.next() {
        Some(package) => format!("{package}.{name}"),
        None => name.to_string(),
    }
}

const REDACTED: &str = "<redacted>";

/// The message's `Debug` text with passwords and tokens blanked.
fn redacted_debug<T: Debug + Clone + 'static>(message: &T) -> String {
    let any = message as &dyn Any;
    if let Some(m) = any.downcast_ref::<AuthenticateRequest>() {
        return format!(
            "{:?}",
            AuthenticateRequest {
                password: REDACTED.into(),
                ..m.clone()
            }
        );
    }
    if let Some(m) = any.downcast_ref::<AuthenticateResponse>() {
        return format!(
            "{:?}",
            AuthenticateResponse {
                token: REDACTED.into(),
                ..m.clone()
            }
        );
    }
    if let Some(m) = any.downcast_ref::<AuthUserAddRequest>() {
        return format!(
            "{:?}",
            AuthUserAddRequest {
                password: REDACTED.into(),
                ..m.clone()
            }
        );
    }
    if let Some(m) = any.downcast_ref::<AuthUserChangePasswordRequest>() {
        let m = AuthUserChangePasswordRequest {
            password: REDACTED.into(),
            ..m.clone()
        };
        return format!("{m:?}");
    }
    format!("{message:?}")
}

/// The prost codec, logging every message it encodes or decodes. `build.rs`
/// makes every generated client use it.
#[derive(Debug, Clone)]
pub(crate) struct WireCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for WireCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for WireCodec<T, U>
where
    T: Message + Debug + Clone + Send + 'static,
    U: Message + Debug + Clone + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = WireEncoder<T>;
    type Decoder = WireDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        WireEncoder(ProstEncoder::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        WireDecoder(ProstDecoder::default())
    }
}

/// Encodes with prost and logs the request.
#[derive(Debug)]
pub(crate) struct WireEncoder<T>(ProstEncoder<T>);

impl<T: Message + Debug + Clone + 'static> Encoder for WireEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        if enabled() {
            log(format_args!(
                "send {} {}",
                message_name::<T>(),
                redacted_debug(&item)
            ));
        }
        self.0.encode(item, buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// Decodes with prost and logs the response.
#[derive(Debug)]
pub(crate) struct WireDecoder<U>(ProstDecoder<U>);

impl<U: Message + Debug + Clone + Default + 'static> Decoder for WireDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let item = self.0.decode(buf)?;
        if let Some(item) = &item
            && enabled()
        {
            log(format_args!(
                "recv {} {}",
                message_name::<U>(),
                redacted_debug(item)
            ));
        }
        Ok(item)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{PutRequest, PutResponse};

    /// The codec hands out its logging encoder and decoder.
    #[test]
    fn the_codec_makes_its_encoder_and_decoder() {
        let mut codec: WireCodec<PutRequest, PutResponse> = Default::default();
        let _encoder: WireEncoder<PutRequest> = codec.encoder();
        let _decoder: WireDecoder<PutResponse> = codec.decoder();
    }

    #[test]
    fn secrets_are_redacted() {
        let req = AuthenticateRequest {
            name: "root".into(),
            password: "hunter2".into(),
        };
        let text = redacted_debug(&req);
        assert!(text.contains("root") && !text.contains("hunter2"), "{text}");
        let resp = AuthenticateResponse {
            header: None,
            token: "tok.123".into(),
        };
        assert!(!redacted_debug(&resp).contains("tok.123"));
    }

    #[test]
    fn names_are_protobuf_names() {
        assert_eq!(
            message_name::<AuthenticateRequest>(),
            "etcdserverpb.AuthenticateRequest"
        );
    }
}
