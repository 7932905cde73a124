//! Generates the psrpc wire messages egret's worker mode speaks with livekit-server:
//! - `rpc` (StartEgressRequest, ...) from `rpc/egress.proto` and `rpc/io.proto`, which ship
//!   inside the livekit-protocol crate; their `livekit.*` types are that crate's own;
//! - `internal` (psrpc's envelopes: Msg, Request, Response, ClaimRequest, ClaimResponse) from
//!   psrpc v0.7.2's `internal.proto`, read from the Go module cache (`tests/setup.sh` runs
//!   `go mod download github.com/livekit/psrpc@v0.7.2`; `EGRET_PSRPC_DIR` overrides).
//!
//! Compiled by protox (pure Rust): no protoc needed.

use std::path::PathBuf;
use std::process::Command;

const PSRPC: &str = "github.com/livekit/psrpc@v0.7.2";

fn main() {
    let protocol = livekit_protocol_dir().join("protocol/protobufs");
    let psrpc = psrpc_dir();
    let includes = [protocol.clone(), psrpc.join("protoc-gen-psrpc/options"), psrpc.join("internal")];
    for dir in &includes {
        assert!(dir.is_dir(), "build: {} is missing", dir.display());
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    println!("cargo:rerun-if-env-changed=EGRET_PSRPC_DIR");
    let files = ["rpc/egress.proto", "rpc/io.proto", "internal.proto"];
    let descriptors = protox::compile(files, includes).unwrap_or_else(|e| panic!("build: protos: {e:?}"));
    prost_build::Config::new()
        .extern_path(".livekit", "::livekit_protocol")
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("build: generating the psrpc messages: {e}"));
}

/// The livekit-protocol crate's source: the version Cargo.lock pins, in cargo's registry.
fn livekit_protocol_dir() -> PathBuf {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let lock_path = manifest.parent().expect("workspace").join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock_path.display());
    let lock = std::fs::read_to_string(&lock_path).expect("build: Cargo.lock");
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"livekit-protocol\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_string())
        .expect("build: livekit-protocol in Cargo.lock");
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo"));
    let registries = std::fs::read_dir(home.join("registry/src")).expect("build: cargo registry sources");
    registries
        .flatten()
        .map(|r| r.path().join(format!("livekit-protocol-{version}")))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("build: livekit-protocol-{version} not in {}/registry/src", home.display()))
}

/// psrpc's sources: `EGRET_PSRPC_DIR`, else the Go module cache.
fn psrpc_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("EGRET_PSRPC_DIR") {
        return PathBuf::from(dir);
    }
    let cache = Command::new("go")
        .args(["env", "GOMODCACHE"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{}/go/pkg/mod", std::env::var("HOME").unwrap_or_default()));
    let dir = PathBuf::from(cache).join(PSRPC);
    assert!(
        dir.is_dir(),
        "build: {} not found: run `go mod download {PSRPC}` (tests/setup.sh does) or set EGRET_PSRPC_DIR",
        dir.display()
    );
    dir
}
