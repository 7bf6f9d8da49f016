//! A model's versions: their records with pooled federated evaluations,
//! their checkpoints (with frozen normalisation added), and the trainers'
//! evaluation reports.

use std::collections::HashMap;

use actix_web::{get, web, HttpResponse};
use serde::Serialize;

use super::common::{ensure_model, limit, read, LimitQuery};
use super::state::AppState;
use crate::db::{self, DbPool, EvalRow};
use crate::error::{ApiError, ErrorBody};
use crate::hub::state::NormState;
use crate::protocol::{ErrorCode, ModelLayout};

/// One global version's record.
#[derive(Serialize, utoipa::ToSchema)]
pub struct VersionInfo {
    pub model: String,
    pub version: i64,
    /// The version it was made from (none for version 0).
    pub parent: Option<i64>,
    /// Updates folded into it.
    pub num_updates: i32,
    pub created_at: String,
    /// Aggregation report, hub evaluation, applied update ids (or, for a
    /// rollback, the version it restored).
    #[schema(value_type = Object)]
    pub metrics: serde_json::Value,
    /// The trainers' own evaluations of this version, pooled (absent until
    /// one reports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub federated_eval: Option<FederatedEval>,
}

/// Trainers' `eval` reports of one version, weighted by their examples (a
/// report without `num_examples` counts as one).
#[derive(Serialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct FederatedEval {
    /// Example-weighted mean of the reports' `global_accuracy`.
    pub accuracy: Option<f64>,
    /// Example-weighted mean of the reports' `loss`.
    pub loss: Option<f64>,
    pub examples: i64,
    pub reports: usize,
}

/// Pools evaluation reports per version.
pub fn pool_evaluations(rows: &[db::EvalFigures]) -> HashMap<i64, FederatedEval> {
    #[derive(Default)]
    struct Sums {
        acc: (f64, f64),
        loss: (f64, f64),
        examples: i64,
        reports: usize,
    }
    let mut by: HashMap<i64, Sums> = HashMap::new();
    for (v, acc, loss, n) in rows {
        let w = n.unwrap_or(1).max(1);
        let s = by.entry(*v).or_default();
        if let Some(a) = acc {
            s.acc.0 += a * w as f64;
            s.acc.1 += w as f64;
        }
        if let Some(l) = loss {
            s.loss.0 += l * w as f64;
            s.loss.1 += w as f64;
        }
        s.examples = s.examples.saturating_add(w);
        s.reports += 1;
    }
    by.into_iter()
        .map(|(v, s)| {
            let mean = |(sum, w): (f64, f64)| (w > 0.0).then(|| sum / w);
            (
                v,
                FederatedEval {
                    accuracy: mean(s.acc),
                    loss: mean(s.loss),
                    examples: s.examples,
                    reports: s.reports,
                },
            )
        })
        .collect()
}

impl From<&db::VersionMeta> for VersionInfo {
    fn from(v: &db::VersionMeta) -> Self {
        VersionInfo {
            model: v.model.clone(),
            version: v.version,
            parent: v.parent,
            num_updates: v.num_updates,
            created_at: v.created_at.clone(),
            metrics: serde_json::from_str(&v.metrics).unwrap_or_else(|_| serde_json::json!({})),
            federated_eval: None,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct VersionsList {
    pub versions: Vec<VersionInfo>,
}

/// Version history with metrics, oldest first.
#[utoipa::path(
    tag = "models",
    params(("model" = String, Path, description = "Model name"), LimitQuery),
    responses(
        (status = 200, description = "The newest `limit` versions", body = VersionsList),
        (status = 400, description = "Bad `limit`", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
    )
)]
#[get("/v1/models/{model}/versions")]
pub async fn list_versions(
    st: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<LimitQuery>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let limit = limit(q.limit, 1000, 100_000)?;
    ensure_model(&st.pool, &name).await?;
    let (rows, evals) = read(&st.pool, move |c| {
        let rows = db::list_versions(c, &name, limit)?;
        let from = rows.first().map(|r| r.version).unwrap_or(0);
        let evals = db::evaluation_figures(c, &name, from)?;
        Ok((rows, evals))
    })
    .await?;
    let pooled = pool_evaluations(&evals);
    Ok(HttpResponse::Ok().json(VersionsList {
        versions: rows
            .iter()
            .map(|r| VersionInfo {
                federated_eval: pooled.get(&r.version).cloned(),
                ..VersionInfo::from(r)
            })
            .collect(),
    }))
}

async fn resolve_version(pool: &DbPool, model: &str, v: &str) -> Result<i64, ApiError> {
    ensure_model(pool, model).await?;
    if v == "latest" {
        let m = model.to_string();
        return read(pool, move |c| db::latest_version(c, &m))
            .await?
            .ok_or_else(|| ApiError::not_found(format!("model `{model}` has no version")));
    }
    match v.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "version must be a number (0 or more) or `latest`, not `{}`",
            v.escape_default()
        ))),
    }
}

/// A version with the federated evaluations trainers reported for it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct VersionDetail {
    #[serde(flatten)]
    pub info: VersionInfo,
    pub evaluations: Vec<EvalRow>,
}

/// One version (number or `latest`): metadata, metrics, federated evaluations.
#[utoipa::path(
    tag = "models",
    params(
        ("model" = String, Path, description = "Model name"),
        ("version" = String, Path, pattern = "^(latest|[0-9]{1,18})$", description = "Version number or `latest`"),
    ),
    responses(
        (status = 200, description = "The version", body = VersionDetail),
        (status = 400, description = "Not a version number", body = ErrorBody),
        (status = 404, description = "No such model or version", body = ErrorBody),
    )
)]
#[get("/v1/models/{model}/versions/{version}")]
pub async fn get_version(
    st: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (model, v) = path.into_inner();
    let version = resolve_version(&st.pool, &model, &v).await?;
    let name = model.clone();
    let row = read(&st.pool, move |c| db::get_version(c, &name, version))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("model `{model}` has no version {version}")))?;
    let name = model.clone();
    let evaluations = read(&st.pool, move |c| {
        db::version_evaluations(c, &name, version)
    })
    .await?;
    let figures: Vec<_> = evaluations
        .iter()
        .map(|e| (version, e.global_accuracy, e.loss, e.num_examples))
        .collect();
    Ok(HttpResponse::Ok().json(VersionDetail {
        info: VersionInfo {
            federated_eval: pool_evaluations(&figures).remove(&version),
            ..VersionInfo::from(&row)
        },
        evaluations,
    }))
}

/// The version's checkpoint as safetensors.
#[utoipa::path(
    tag = "models",
    params(
        ("model" = String, Path, description = "Model name"),
        ("version" = String, Path, pattern = "^(latest|[0-9]{1,18})$", description = "Version number or `latest`"),
    ),
    responses(
        (status = 200, description = "safetensors checkpoint", content_type = "application/octet-stream"),
        (status = 400, description = "Not a version number", body = ErrorBody),
        (status = 404, description = "No such model or version", body = ErrorBody),
        (status = 410, description = "Weights dropped by `keep_weights_versions` (`weights_pruned`)", body = ErrorBody),
    )
)]
#[get("/v1/models/{model}/versions/{version}/weights")]
pub async fn get_weights(
    st: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (model, v) = path.into_inner();
    let version = resolve_version(&st.pool, &model, &v).await?;
    let name = model.clone();
    let blobs = st.blobs.clone();
    let (bytes, row) = read(&st.pool, move |c| {
        Ok((
            db::get_weights(c, &blobs, &name, version)?,
            db::get_model(c, &name)?,
        ))
    })
    .await?;
    let bytes = bytes
        .ok_or_else(|| ApiError::not_found(format!("model `{model}` has no version {version}")))?;
    if bytes.is_empty() {
        return Err(ApiError::new(
            ErrorCode::WeightsPruned,
            format!(
                "the weights of version {version} of `{model}` were dropped: the hub keeps the \
                 newest hub.keep_weights_versions checkpoints of each model"
            ),
        ));
    }
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((
            "content-disposition",
            format!("attachment; filename=\"{model}-v{version}.safetensors\""),
        ))
        .insert_header(("x-kernal-version", version.to_string()))
        .body(with_normalisation(bytes, row.as_ref(), version).await?))
}

/// A checkpoint of a model with frozen normalisation carries it as two more
/// tensors, `normalisation.mean` and `normalisation.std`, so that it is
/// usable on raw features without asking the hub. (Trainers get weights
/// over the WebSocket without them: they hold the statistics already.)
async fn with_normalisation(
    bytes: Vec<u8>,
    row: Option<&db::ModelRow>,
    version: i64,
) -> Result<Vec<u8>, ApiError> {
    let Some(row) = row else {
        return Ok(bytes);
    };
    let norm = NormState::from_stored(row.normalisation.as_deref())
        .ok()
        .and_then(|n| n.frozen().cloned());
    let (Some(n), Ok(layout)) = (norm, serde_json::from_str::<ModelLayout>(&row.layout)) else {
        return Ok(bytes);
    };
    let (Some(mean), Some(std)) = (n.mean, n.std) else {
        return Ok(bytes);
    };
    web::block(move || {
        let mut weights = layout.decode(&bytes).map_err(|e| e.message)?;
        let mut tensors = layout.tensors.clone();
        let (m, s) = (mean.len(), std.len());
        let stats = vec![
            ("normalisation.mean".into(), vec![m]),
            ("normalisation.std".into(), vec![s]),
        ];
        tensors.extend(ModelLayout::new(stats).tensors);
        weights.extend_from_slice(&mean);
        weights.extend_from_slice(&std);
        let mut meta = std::collections::HashMap::new();
        meta.insert("version".to_string(), version.to_string());
        meta.insert(
            "normalisation".to_string(),
            "inputs are (x - normalisation.mean) / normalisation.std".to_string(),
        );
        ModelLayout { tensors }
            .encode(&weights, Some(&meta))
            .map_err(|e| e.message)
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
    .map_err(|e| ApiError::new(ErrorCode::Internal, e))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EvaluationsList {
    pub evaluations: Vec<EvalRow>,
}

/// Federated evaluations reported by trainers, oldest first.
#[utoipa::path(
    tag = "models",
    params(("model" = String, Path, description = "Model name"), LimitQuery),
    responses(
        (status = 200, description = "The newest `limit` evaluations", body = EvaluationsList),
        (status = 400, description = "Bad `limit`", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
    )
)]
#[get("/v1/models/{model}/evaluations")]
pub async fn list_evaluations(
    st: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<LimitQuery>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let limit = limit(q.limit, 5000, 100_000)?;
    ensure_model(&st.pool, &name).await?;
    let evaluations = read(&st.pool, move |c| db::list_evaluations(c, &name, limit)).await?;
    Ok(HttpResponse::Ok().json(EvaluationsList { evaluations }))
}
