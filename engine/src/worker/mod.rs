//! Worker mode (`[redis]` in egress.toml): egret takes egresses from livekit-server's own
//! dispatch, as livekit/egress workers do, over psrpc on Redis.
//!
//! livekit-server publishes `EgressInternal.StartEgress`; every worker that can afford it
//! claims with an affinity (admission); the server confirms the best claim; that worker
//! answers EGRESS_STARTING and runs the matching recipe. StopEgress / UpdateStream arrive on
//! the egress id's topic. Status goes back through `IOInfo.UpdateEgress`; egresses started on
//! egret's own API are announced with `IOInfo.CreateEgress`, so both views show all of them.

pub mod admission;
mod bus;
mod io_info;
mod reaper;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use livekit_protocol as lk;
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use crate::config::WorkerConfig;
use crate::egress::EgressRecord;
use crate::egress::livekit as face;
use crate::egress::manager::{Manager, StartOptions};
use crate::errors::Error;
use crate::proto::internal::{ClaimRequest, ClaimResponse, Request, Response};
use crate::proto::rpc;
use admission::Admission;
use bus::{Bus, Received};
use io_info::IoInfo;

pub struct Worker {
    /// This worker's psrpc server and client id.
    id: String,
    bus: Bus,
    io: Arc<IoInfo>,
    admission: Arc<Admission>,
    manager: Arc<Manager>,
    /// Egresses livekit-server dispatched here (it records them itself: no CreateEgress).
    dispatched: Mutex<HashSet<String>>,
    /// Claims this worker made, waiting for the client's choice.
    claims: Mutex<HashMap<String, oneshot::Sender<ClaimResponse>>>,
    reaper: reaper::Reaper,
    /// One permit per egress being followed; `flush` takes them all.
    following: Arc<tokio::sync::Semaphore>,
}

/// psrpc ids: a prefix and random [0-9a-z] (channel-safe).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

const MAX_FOLLOWED: u32 = 1 << 16;

impl Worker {
    /// Its admission (load and capacity), for /metrics.
    pub fn admission(&self) -> Arc<Admission> {
        self.admission.clone()
    }

    /// Connects to Redis, starts serving livekit-server's requests and reporting every egress.
    pub async fn start(config: &WorkerConfig, manager: Arc<Manager>) -> Result<Arc<Worker>> {
        let id = new_id("EW");
        let mut channels: Vec<String> = [
            "EgressInternal|StartEgress|REQ",
            "EgressInternal|StartEgress|RCLAIM",
            "EgressInternal|ListActiveEgress|REQ",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        channels.extend(IoInfo::channels(&id));
        // StopEgress / UpdateStream requests and claims, for every egress id: kept if it is ours.
        let patterns = ["EgressHandler|*".to_string()];
        let (bus, messages) = Bus::connect(&config.redis_url, &channels, &patterns).await?;
        let admission = Arc::new(Admission::new(config.cpus, config.costs.clone()));
        tokio::spawn(admission.clone().measure());
        let worker = Arc::new(Worker {
            io: IoInfo::new(bus.clone(), id.clone()),
            reaper: reaper::Reaper::new(bus.conn(), id.clone()),
            id,
            bus,
            admission,
            manager: manager.clone(),
            dispatched: Mutex::new(HashSet::new()),
            claims: Mutex::new(HashMap::new()),
            following: Arc::new(tokio::sync::Semaphore::new(MAX_FOLLOWED as usize)),
        });
        tokio::spawn(worker.clone().dispatch(messages));
        tokio::spawn(worker.clone().reaper.clone().run(worker.io.clone()));
        tracing::info!(worker = %worker.id, redis = %config.redis_url, cpus = config.cpus, "worker mode: serving livekit-server's egress dispatch");
        Ok(worker)
    }

    /// Follows every egress the manager starts (wired in main.rs, before any starts): its
    /// updates go to livekit-server.
    pub fn observer(self: &Arc<Self>) -> crate::egress::manager::Observer {
        let worker = Arc::downgrade(self);
        Arc::new(move |record| {
            if let Some(worker) = worker.upgrade() {
                worker.follow(record.clone());
            }
        })
    }

    /// Waits (bounded) until every egress's last status reached livekit-server.
    pub async fn flush(&self) {
        let all = tokio::time::timeout(Duration::from_secs(15), self.following.acquire_many(MAX_FOLLOWED)).await;
        if all.is_err() {
            tracing::warn!("worker: some final statuses may not have reached livekit-server");
        }
        self.reaper.retire().await;
    }

    async fn dispatch(self: Arc<Self>, mut messages: mpsc::UnboundedReceiver<Received>) {
        while let Some(message) = messages.recv().await {
            let worker = self.clone();
            match message.type_url.rsplit('/').next().unwrap_or("") {
                "internal.Request" => {
                    if let Ok(request) = Request::decode(message.value.as_slice()) {
                        tokio::spawn(async move { worker.on_request(&message.channel, &message.raw, request).await });
                    }
                }
                "internal.ClaimResponse" => {
                    if let Ok(claim) = ClaimResponse::decode(message.value.as_slice())
                        && let Some(tx) = self.claims.lock().unwrap().remove(&claim.request_id)
                    {
                        let _ = tx.send(claim);
                    }
                }
                "internal.ClaimRequest" => {
                    if let Ok(claim) = ClaimRequest::decode(message.value.as_slice()) {
                        self.io.on_claim(claim);
                    }
                }
                "internal.Response" => {
                    if let Ok(response) = Response::decode(message.value.as_slice()) {
                        self.io.on_response(response);
                    }
                }
                _ => {}
            }
        }
    }

    async fn on_request(&self, channel: &str, raw: &[u8], request: Request) {
        if now_ns() > request.expiry {
            return;
        }
        let parts: Vec<&str> = channel.split('|').collect();
        match parts.as_slice() {
            ["EgressInternal", "StartEgress", "REQ"] => self.start_egress(request).await,
            ["EgressInternal", "ListActiveEgress", "REQ"] => {
                let ids =
                    self.manager.list().iter().filter(|e| !e.status().is_terminal()).map(|e| e.id.clone()).collect();
                let answer = rpc::ListActiveEgressResponse { egress_ids: ids };
                self.respond("EgressInternal", &request, Ok(answer.encode_to_vec())).await;
            }
            ["EgressHandler", method @ ("StopEgress" | "UpdateStream"), egress_id, "REQ"] => {
                // Only the worker running it answers; the queue lock keeps it to one delivery.
                let ours = self.manager.get(egress_id).is_some_and(|e| !e.status().is_terminal());
                if ours && self.bus.take(raw).await && self.claim("EgressHandler", &request, 1.0).await {
                    let result = self.handle(method, egress_id, &request.raw_request).await;
                    self.respond("EgressHandler", &request, result).await;
                }
            }
            _ => {}
        }
    }

    async fn start_egress(&self, request: Request) {
        if self.manager.is_draining() {
            return;
        }
        let Ok(start) = rpc::StartEgressRequest::decode(request.raw_request.as_slice()) else { return };
        let Some(started) = start.request.as_ref().and_then(|r| face::dispatched_request(r).ok()) else {
            return; // a kind of egress egret does not run: leave it to others
        };
        let recipe = started.recipe;
        let cost = self.admission.cost(recipe, &started.params);
        let Some(affinity) = self.admission.affinity(cost) else { return };
        if !self.claim("EgressInternal", &request, affinity).await {
            return;
        }
        self.admission.reserve(&start.egress_id, cost);
        self.dispatched.lock().unwrap().insert(start.egress_id.clone());
        // Answered as egret's own API answers: once the recipe's start returned or waits on the
        // outside world. A request the recipe refuses (a bad layout) is an error to the caller
        // and leaves no egress, as LiveKit validates before it answers.
        let options = StartOptions {
            egress_id: Some(start.egress_id.clone()),
            livekit_request: Some(started.original),
            ..Default::default()
        };
        let (result, record) = match self.manager.start_with(recipe, started.params, options).await {
            Ok(record) => (Ok(face::start_answer(&record, &self.manager.storage_dir()).encode_to_vec()), Some(record)),
            Err(e) => {
                self.admission.release(&start.egress_id);
                self.dispatched.lock().unwrap().remove(&start.egress_id);
                (Err(e.error), None)
            }
        };
        tracing::info!(worker = %self.id, egress = %start.egress_id, recipe, cost, ok = result.is_ok(), "dispatched egress");
        self.respond("EgressInternal", &request, result).await;
        // The start was answered STARTING, as LiveKit does, and livekit-server records it so
        // once our answer reached its API handler: an update that arrives before that record is
        // written is overwritten by it. An egress already past STARTING is reported again a
        // moment after the answer (we cannot see when the server stored it), not only at its
        // next change.
        if let Some(record) = record
            && record.status() != crate::egress::EgressStatus::Starting
        {
            let (io, storage) = (self.io.clone(), self.manager.storage_dir());
            tokio::spawn(async move {
                for delay in [Duration::from_millis(300), Duration::from_millis(1500)] {
                    tokio::time::sleep(delay).await;
                    if let Err(e) = io.update_egress(&face::info_of(&record, &storage)).await {
                        tracing::warn!(egress = %record.id, "status not reported to livekit-server: {e:#}");
                    }
                }
            });
        }
    }

    async fn handle(&self, method: &str, egress_id: &str, raw: &[u8]) -> Result<Vec<u8>, Error> {
        let record = if method == "StopEgress" {
            self.manager.stop(egress_id, crate::egress::reason::STOPPED_BY_API).await?
        } else {
            let update = face::Body::Protobuf(raw).decode::<lk::UpdateStreamRequest>()?;
            self.manager.update_stream(egress_id, update.add_output_urls, update.remove_output_urls).await?
        };
        Ok(self.info(&record).encode_to_vec())
    }

    /// psrpc's claim: offer to handle `request`; true when the client chose this worker.
    async fn claim(&self, service: &str, request: &Request, affinity: f32) -> bool {
        let (tx, rx) = oneshot::channel();
        self.claims.lock().unwrap().insert(request.request_id.clone(), tx);
        let offer = ClaimRequest { request_id: request.request_id.clone(), server_id: self.id.clone(), affinity };
        let channel = format!("{service}|{}|CLAIM", request.client_id);
        let chosen = match self.bus.publish(&channel, "internal.ClaimRequest", &offer).await {
            Ok(()) => {
                let left = Duration::from_nanos((request.expiry - now_ns()).max(0) as u64);
                matches!(tokio::time::timeout(left, rx).await, Ok(Ok(claim)) if claim.server_id == self.id)
            }
            Err(e) => {
                tracing::warn!("worker: claim not sent: {e:#}");
                false
            }
        };
        self.claims.lock().unwrap().remove(&request.request_id);
        chosen
    }

    async fn respond(&self, service: &str, request: &Request, result: Result<Vec<u8>, Error>) {
        let mut response = Response {
            request_id: request.request_id.clone(),
            server_id: self.id.clone(),
            sent_at: now_ns(),
            ..Default::default()
        };
        match result {
            Ok(raw) => response.raw_response = raw,
            Err(e) => (response.code, response.error) = (e.kind.psrpc_code().to_string(), e.to_string()),
        }
        let channel = format!("{service}|{}|RES", request.client_id);
        if let Err(e) = self.bus.publish(&channel, "internal.Response", &response).await {
            tracing::warn!("worker: response not sent: {e:#}");
        }
    }

    fn info(&self, record: &EgressRecord) -> lk::EgressInfo {
        face::info_of(record, &self.manager.storage_dir())
    }

    /// Reports one egress to livekit-server for as long as it runs, and records it for the
    /// reaper (which fails it in livekit-server's view should this worker die).
    fn follow(self: &Arc<Self>, record: Arc<EgressRecord>) {
        let Ok(permit) = self.following.clone().try_acquire_owned() else { return };
        let worker = self.clone();
        if record.is_restored() {
            // An egress a restart interrupted: livekit-server still lists it as running.
            tokio::spawn(async move {
                if let Err(e) = worker.io.update_egress(&worker.info(&record)).await {
                    tracing::warn!(egress = %record.id, "interrupted egress not reported to livekit-server: {e:#}");
                }
                drop(permit);
            });
            return;
        }
        let dispatched = self.dispatched.lock().unwrap().remove(&record.id);
        if !dispatched {
            // Started on egret's own API (or always-on): it loads this worker all the same.
            self.admission.reserve(&record.id, self.admission.cost(&record.recipe, &record.params));
        }
        tokio::spawn(async move {
            // Every update a client can see (status, a stream added, removed or failed), so
            // livekit-server's ListEgress and webhooks follow UpdateStream too.
            let mut changes = record.watch_updates();
            let info = worker.info(&record);
            worker.reaper.track(&info).await;
            if !dispatched && let Err(e) = worker.io.create_egress(&info).await {
                tracing::warn!(egress = %record.id, "livekit-server not told of the egress: {e:#}");
            }

            // The state reported decides whether a report was the last: the record may turn
            // terminal between a look at it and the report (or before its start returned,
            // when observers hear of it), and no change follows a terminal state.
            let is_final = |info: &lk::EgressInfo| info.status >= lk::EgressStatus::EgressComplete as i32;
            let mut done = is_final(&info);
            if done && let Err(e) = worker.io.update_egress(&info).await {
                tracing::warn!(egress = %record.id, "status not reported to livekit-server: {e:#}");
            }
            while !done && changes.changed().await.is_ok() {
                changes.borrow_and_update();
                let info = worker.info(&record);
                done = is_final(&info);
                if let Err(e) = worker.io.update_egress(&info).await {
                    tracing::warn!(egress = %record.id, "status not reported to livekit-server: {e:#}");
                }
                if !done {
                    worker.reaper.track(&info).await;
                }
            }
            worker.reaper.untrack(&record.id).await;
            worker.admission.release(&record.id);
            drop(permit);
        });
    }
}
