//! The IOInfo client: egret tells livekit-server about its egresses (CreateEgress for those
//! started through egret's own API, UpdateEgress on every status change), so livekit-server's
//! ListEgress and webhooks show them. Each call is a psrpc request with a claim handshake:
//! a livekit-server node claims it, egret confirms, the node answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use livekit_protocol as lk;
use prost::Message;
use tokio::sync::oneshot;

use super::bus::Bus;
use super::{new_id, now_ns};
use crate::proto::internal::{ClaimRequest, ClaimResponse, Request, Response};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Pending {
    claim: Option<oneshot::Sender<ClaimRequest>>,
    response: Option<oneshot::Sender<Response>>,
}

/// Calls on livekit-server's IOInfo service, as client `client_id`.
pub struct IoInfo {
    bus: Bus,
    client_id: String,
    pending: Mutex<HashMap<String, Pending>>,
}

impl IoInfo {
    pub fn new(bus: Bus, client_id: String) -> Arc<Self> {
        Arc::new(IoInfo { bus, client_id, pending: Mutex::new(HashMap::new()) })
    }

    /// The channels this client's claims and answers arrive on.
    pub fn channels(client_id: &str) -> [String; 2] {
        [format!("IOInfo|{client_id}|CLAIM"), format!("IOInfo|{client_id}|RES")]
    }

    pub fn on_claim(&self, claim: ClaimRequest) {
        if let Some(tx) = self.pending.lock().unwrap().get_mut(&claim.request_id).and_then(|p| p.claim.take()) {
            let _ = tx.send(claim);
        }
    }

    pub fn on_response(&self, response: Response) {
        if let Some(tx) = self.pending.lock().unwrap().get_mut(&response.request_id).and_then(|p| p.response.take()) {
            let _ = tx.send(response);
        }
    }

    pub async fn create_egress(&self, info: &lk::EgressInfo) -> Result<()> {
        self.call("CreateEgress", info).await
    }

    pub async fn update_egress(&self, info: &lk::EgressInfo) -> Result<()> {
        self.call("UpdateEgress", info).await
    }

    async fn call(&self, method: &str, message: &impl Message) -> Result<()> {
        let request_id = new_id("REQ");
        let (claim_tx, claim_rx) = oneshot::channel();
        let (response_tx, response_rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap()
            .insert(request_id.clone(), Pending { claim: Some(claim_tx), response: Some(response_tx) });
        let result = self.exchange(method, message, &request_id, claim_rx, response_rx).await;
        self.pending.lock().unwrap().remove(&request_id);
        result
    }

    async fn exchange(
        &self,
        method: &str,
        message: &impl Message,
        request_id: &str,
        claim_rx: oneshot::Receiver<ClaimRequest>,
        response_rx: oneshot::Receiver<Response>,
    ) -> Result<()> {
        let sent_at = now_ns();
        let request = Request {
            request_id: request_id.to_string(),
            client_id: self.client_id.clone(),
            sent_at,
            expiry: sent_at + CALL_TIMEOUT.as_nanos() as i64,
            raw_request: message.encode_to_vec(),
            ..Default::default()
        };
        self.bus.publish(&format!("IOInfo|{method}|REQ"), "internal.Request", &request).await?;
        let answer = async {
            // Every livekit-server node shares one store: the first claim will do.
            let claim = claim_rx.await.map_err(|_| anyhow!("claim channel closed"))?;
            let confirm = ClaimResponse { request_id: request_id.to_string(), server_id: claim.server_id };
            self.bus.publish(&format!("IOInfo|{method}|RCLAIM"), "internal.ClaimResponse", &confirm).await?;
            response_rx.await.map_err(|_| anyhow!("response channel closed"))
        };
        let response = tokio::time::timeout(CALL_TIMEOUT, answer)
            .await
            .map_err(|_| anyhow!("IOInfo.{method}: no livekit-server answered within {}s", CALL_TIMEOUT.as_secs()))??;
        if !response.error.is_empty() {
            bail!("IOInfo.{method}: {} ({})", response.error, response.code);
        }
        Ok(())
    }
}
