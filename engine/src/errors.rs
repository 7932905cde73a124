//! The one error catalogue: every refusal or failure the engine reports to a caller has a
//! kind, and each kind maps once to an HTTP status (egret's own API), a Twirp code (LiveKit's
//! Egress API) and a psrpc code (livekit-server's dispatch). The domain never speaks numbers.

use std::fmt;

use crate::request::FieldError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ErrorKind {
    /// A request field is wrong (named by `field`).
    InvalidArgument,
    /// The body could not be decoded at all.
    Malformed,
    /// The recipe asked for is not installed (LiveKit: the egress type is not offered).
    UnknownRecipe,
    /// The recipe's `start` failed, or the recipe does not load.
    RecipeFailed,
    /// No such egress (or room, participant, track).
    NotFound,
    /// An egress with this id exists already.
    AlreadyExists,
    /// The egress ended already: nothing to stop or update.
    AlreadyEnded,
    /// The egress cannot do this now or at all (no layout handler, not encoding yet).
    FailedPrecondition,
    /// egret is draining (SIGTERM) or full.
    Unavailable,
    Unauthenticated,
    PermissionDenied,
    Internal,
}

impl ErrorKind {
    /// egret's own JSON API.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidArgument | ErrorKind::Malformed => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::UnknownRecipe | ErrorKind::NotFound => 404,
            ErrorKind::AlreadyExists | ErrorKind::AlreadyEnded => 409,
            ErrorKind::FailedPrecondition => 412,
            ErrorKind::RecipeFailed => 422,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }

    /// LiveKit's Twirp error code, as its server SDKs read it.
    pub fn twirp_code(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument | ErrorKind::RecipeFailed => "invalid_argument",
            ErrorKind::Malformed => "malformed",
            ErrorKind::UnknownRecipe => "unimplemented",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::AlreadyEnded | ErrorKind::FailedPrecondition => "failed_precondition",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Internal => "internal",
        }
    }

    /// The HTTP status of a Twirp code (Twirp's own table).
    pub fn twirp_status(self) -> u16 {
        match self.twirp_code() {
            "invalid_argument" | "malformed" => 400,
            "unauthenticated" => 401,
            "permission_denied" => 403,
            "not_found" => 404,
            "already_exists" => 409,
            "failed_precondition" => 412,
            "unimplemented" => 501,
            "unavailable" => 503,
            _ => 500,
        }
    }

    /// psrpc's error code (livekit-server turns it into the Twirp error its caller sees).
    pub fn psrpc_code(self) -> &'static str {
        match self {
            ErrorKind::Malformed => "malformed_request",
            other => other.twirp_code(),
        }
    }
}

/// An error as callers see it: its kind, the request field it is about (may be empty) and
/// a message. The message never carries the field; `Display` puts them together.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub kind: ErrorKind,
    pub field: String,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: ErrorKind, field: impl Into<String>, message: impl Into<String>) -> Self {
        Error { kind, field: field.into(), message: message.into() }
    }

    pub fn invalid(e: FieldError) -> Self {
        let kind = if e.conflict { ErrorKind::AlreadyExists } else { ErrorKind::InvalidArgument };
        Error { kind, field: e.field, message: e.message }
    }

    pub fn egress_not_found(id: &str) -> Self {
        Error::new(ErrorKind::NotFound, "", format!("egress {id} not found"))
    }

    pub fn already_ended(id: &str, status: impl fmt::Debug) -> Self {
        let status = format!("{status:?}").to_lowercase();
        Error::new(ErrorKind::AlreadyEnded, "", format!("egress {id} already ended ({status})"))
    }

    pub fn field_error(&self) -> FieldError {
        let e = FieldError::new(self.field.clone(), self.message.clone());
        FieldError { conflict: self.kind == ErrorKind::AlreadyExists, ..e }
    }
}

impl From<FieldError> for Error {
    fn from(e: FieldError) -> Self {
        Error::invalid(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_maps_to_every_protocol() {
        use ErrorKind::*;
        let table = [
            (InvalidArgument, 400, "invalid_argument", 400, "invalid_argument"),
            (Malformed, 400, "malformed", 400, "malformed_request"),
            (UnknownRecipe, 404, "unimplemented", 501, "unimplemented"),
            (RecipeFailed, 422, "invalid_argument", 400, "invalid_argument"),
            (NotFound, 404, "not_found", 404, "not_found"),
            (AlreadyExists, 409, "already_exists", 409, "already_exists"),
            (AlreadyEnded, 409, "failed_precondition", 412, "failed_precondition"),
            (FailedPrecondition, 412, "failed_precondition", 412, "failed_precondition"),
            (Unavailable, 503, "unavailable", 503, "unavailable"),
            (Unauthenticated, 401, "unauthenticated", 401, "unauthenticated"),
            (PermissionDenied, 403, "permission_denied", 403, "permission_denied"),
            (Internal, 500, "internal", 500, "internal"),
        ];
        for (kind, http, twirp, twirp_status, psrpc) in table {
            assert_eq!(kind.http_status(), http, "{kind:?}");
            assert_eq!(kind.twirp_code(), twirp, "{kind:?}");
            assert_eq!(kind.twirp_status(), twirp_status, "{kind:?}");
            assert_eq!(kind.psrpc_code(), psrpc, "{kind:?}");
        }
    }

    #[test]
    fn display_names_the_field() {
        let e = Error::new(ErrorKind::InvalidArgument, "file_outputs[0].filepath", "escapes storage");
        assert_eq!(e.to_string(), "file_outputs[0].filepath: escapes storage");
        assert_eq!(Error::egress_not_found("EG_x").to_string(), "egress EG_x not found");
    }
}
