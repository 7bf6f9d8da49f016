//! The contributions ledger, paged by ledger id.

use actix_web::{get, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

use super::common::limit;
use super::{read, AppState};
use crate::db::{self, UpdateRow};
use crate::error::{ApiError, ErrorBody};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UpdatesQuery {
    /// Only this model's updates.
    pub model: Option<String>,
    /// Only this trainer's updates.
    pub trainer: Option<String>,
    /// Only rows in this status.
    #[param(inline)]
    pub status: Option<UpdateStatus>,
    /// At most this many rows (1 to 1000000, default 1000).
    #[param(minimum = 1, maximum = 1000000)]
    pub limit: Option<i64>,
    /// Paging: the rows after this ledger id, oldest first. Without it, the
    /// newest `limit` rows (oldest first).
    #[param(minimum = 0)]
    pub after: Option<i64>,
}

/// Where an update is in the ledger.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpdateStatus {
    Pending,
    Applied,
    Refused,
}

impl UpdateStatus {
    fn as_str(self) -> &'static str {
        match self {
            UpdateStatus::Pending => "pending",
            UpdateStatus::Applied => "applied",
            UpdateStatus::Refused => "refused",
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UpdatesPage {
    pub updates: Vec<UpdateRow>,
    /// With `after`: the `after` of the next page, or none when this page
    /// reached the end of the ledger.
    pub next_after: Option<i64>,
}

/// The contributions ledger. To read all of it, start with `after=0` and
/// pass each page's `next_after` until it is null.
#[utoipa::path(
    tag = "updates",
    params(UpdatesQuery),
    responses(
        (status = 200, description = "A page of the ledger", body = UpdatesPage),
        (status = 400, description = "Bad query parameter", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
    )
)]
#[get("/v1/updates")]
pub async fn list_updates(
    st: web::Data<AppState>,
    q: web::Query<UpdatesQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    if q.after.is_some_and(|a| a < 0) {
        return Err(ApiError::bad_request("after: must be 0 or more"));
    }
    let limit = limit(q.limit, 1000, 1_000_000)?;
    if let Some(m) = &q.model {
        let n = m.clone();
        if read(&st.pool, move |c| db::get_model(c, &n))
            .await?
            .is_none()
        {
            return Err(ApiError::new(
                crate::protocol::ErrorCode::UnknownModel,
                format!("no model named `{}`", m.escape_default()),
            ));
        }
    }
    let after = q.after;
    let rows = read(&st.pool, move |c| {
        db::list_updates(
            c,
            &db::UpdateFilter {
                model: q.model.as_deref(),
                trainer: q.trainer.as_deref(),
                status: q.status.map(UpdateStatus::as_str),
                after,
            },
            limit,
        )
    })
    .await?;
    let next_after = match after {
        Some(_) if rows.len() as i64 == limit => rows.last().map(|r| r.id),
        _ => None,
    };
    Ok(HttpResponse::Ok().json(UpdatesPage {
        updates: rows,
        next_after,
    }))
}
