//! Dead-letter replay: re-run the stored bytes through decode, validate and decide (e.g. after a
//! schema version or a card-data key was added). A replay that succeeds is applied like any
//! event; one that fails again keeps the dead letter, marked with the new reason.

use std::collections::HashMap;

use chrono::Utc;
use sqlx::PgPool;

use super::apply::{ApplyError, apply_messages};
use super::message::{Incoming, RawMessage};
use super::prepare::{Pipeline, PrepareError};
use crate::core::event::EventKind;
use crate::store::dead_letters::ReplayStatus;
use crate::store::{StoreError, dead_letters};

/// The result of replaying one dead letter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Replayed {
    /// Dead-letter id.
    pub id: i64,
    /// `REPLAYED` or `STILL_FAILING`.
    pub status: ReplayStatus,
    /// The effect, or the reason it still fails.
    pub detail: String,
}

/// Replay failed for a reason that is not about the message (retry later).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Applying failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// Decoding hit a transient problem (schema registry).
    #[error(transparent)]
    Prepare(#[from] PrepareError),
}

/// Replays the given dead letters, one transaction each.
pub async fn replay(
    pool: &PgPool,
    pipeline: &Pipeline,
    topics: &HashMap<String, EventKind>,
    ids: &[i64],
) -> Result<Vec<Replayed>, ReplayError> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(r) = replay_one(pool, pipeline, topics, *id).await? {
            out.push(r);
        }
    }
    Ok(out)
}

async fn replay_one(
    pool: &PgPool,
    pipeline: &Pipeline,
    topics: &HashMap<String, EventKind>,
    id: i64,
) -> Result<Option<Replayed>, ReplayError> {
    let mut tx = pool.begin().await.map_err(|e| StoreError::db("begin replay", e))?;
    let Some((letter, envelope)) = dead_letters::envelope_for_update(&mut tx, id).await? else {
        return Ok(None);
    };
    if letter.replay_status == ReplayStatus::Replayed {
        return Ok(Some(Replayed { id, status: ReplayStatus::Replayed, detail: "already replayed".into() }));
    }
    let still = |detail: String| Replayed { id, status: ReplayStatus::StillFailing, detail };
    let result = match topics.get(&letter.topic) {
        None => still(format!("topic {} is not one of the configured input topics", letter.topic)),
        Some(kind) => match pipeline.sealer().open(&envelope).map(|b| RawMessage::from_bytes(&b)) {
            Err(e) => still(e.to_string()),
            Ok(Err(e)) => still(e.to_string()),
            Ok(Ok(raw)) => {
                let incoming = [Incoming { offset: letter.offset, raw }];
                let prepared = pipeline.prepare(*kind, &incoming).await?;
                match prepared.first().map(|p| &p.outcome) {
                    Some(Err(rejection)) => {
                        still(format!("{}: {}", rejection.reason.code(), rejection.detail))
                    }
                    _ => {
                        let applied = apply_messages(
                            &mut tx,
                            pipeline.sealer(),
                            &letter.topic,
                            letter.partition,
                            &prepared,
                            Utc::now(),
                        )
                        .await?;
                        match (applied.dead_letters.first(), applied.effects.first(), applied.duplicates) {
                            (Some(reason), _, _) => still(reason.code().to_owned()),
                            (None, Some(effect), _) => Replayed {
                                id,
                                status: ReplayStatus::Replayed,
                                detail: effect.as_str().to_owned(),
                            },
                            (None, None, _) => Replayed {
                                id,
                                status: ReplayStatus::Replayed,
                                detail: "already applied (duplicate event)".into(),
                            },
                        }
                    }
                }
            }
        },
    };
    dead_letters::mark_replayed(&mut tx, id, result.status, &result.detail).await?;
    tx.commit().await.map_err(|e| StoreError::db("commit replay", e))?;
    Ok(Some(result))
}
