//! Faults of a broker's metadata calls, through
//! [`tributary_meta::faults::FaultyMeta`]: calls fail, stall or hang before
//! reaching the store, segment writes wait inside the store (and land after
//! their caller gave up), answers are lost; a crashed broker's calls never
//! return.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tributary_meta::faults::{injected, MetaFaults};

use crate::chaos::{fenced, Chaos};

pub(crate) struct MetaChaos {
    pub chaos: Arc<Chaos>,
    pub crashed: CancellationToken,
    pub who: String,
}

#[async_trait]
impl MetaFaults for MetaChaos {
    async fn before(&self, op: &'static str) -> tributary_meta::Result<()> {
        fenced(Some(&self.crashed), async {
            let stall = self.chaos.meta_stall();
            if !stall.is_zero() {
                self.chaos
                    .trace
                    .event(|| format!("{} meta {op} stalls {}ms", self.who, stall.as_millis()));
                tokio::time::sleep(stall).await;
            }
            if self.chaos.roll(self.chaos.params.meta_fail) {
                self.chaos
                    .trace
                    .event(|| format!("{} meta {op} failed", self.who));
                return Err(injected(op));
            }
            Ok(())
        })
        .await
    }

    async fn after(&self, op: &'static str, ok: bool) -> tributary_meta::Result<()> {
        fenced(Some(&self.crashed), async {
            if ok && self.chaos.roll(self.chaos.params.meta_lost) {
                self.chaos
                    .trace
                    .event(|| format!("{} meta {op} answer lost", self.who));
                return Err(injected(op));
            }
            Ok(())
        })
        .await
    }

    async fn in_store(&self, op: &'static str) {
        if self.chaos.roll(self.chaos.params.in_store_stall) {
            let d = self.chaos.upto(self.chaos.params.in_store_ms);
            self.chaos.trace.event(|| {
                format!(
                    "{} meta {op} waits in the store {}ms",
                    self.who,
                    d.as_millis()
                )
            });
            tokio::time::sleep(d).await;
        }
    }
}
