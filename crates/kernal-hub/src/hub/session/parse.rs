//! A text frame made a message, and an update header checked: plain
//! functions with the error code each refusal gets, tested without actix.

use crate::protocol::{ClientMessage, ErrorCode, Refusal};

/// A text frame refused before it became a message.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseRefusal {
    pub code: ErrorCode,
    pub message: String,
    /// The `update_id` of a refused `update` header, recovered where the
    /// frame allows it, so the error can name the update.
    pub update_id: Option<String>,
    /// The frame was an `update` header: its binary frame is swallowed.
    pub was_update: bool,
}

impl ParseRefusal {
    fn plain(code: ErrorCode, message: String) -> Self {
        ParseRefusal {
            code,
            message,
            update_id: None,
            was_update: false,
        }
    }
}

/// What bare non-finite tokens are replaced with so the rest of the frame
/// can still be read.
const NON_FINITE_MARK: &str = "\u{0}non-finite";
/// The same marker as it is written into JSON text.
const NON_FINITE_MARK_JSON: &str = "\\u0000non-finite";

/// Python's `json.dumps` writes `NaN`, `Infinity` and `-Infinity` as bare
/// tokens, which JSON does not have. Returns the text with each such token
/// outside a string replaced by a marker string, or None if it has none.
fn mark_non_finite_tokens(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let (mut out, mut last, mut i) = (String::new(), 0, 0);
    let (mut in_string, mut escaped, mut found) = (false, false, false);
    while i < b.len() {
        let c = b[i];
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        let token = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| b[i..].starts_with(t.as_bytes()));
        let ends = |n: usize| b.get(i + n).is_none_or(|c| !c.is_ascii_alphanumeric());
        match token {
            Some(t) if ends(t.len()) => {
                out.push_str(&text[last..i]);
                out.push('"');
                out.push_str(NON_FINITE_MARK_JSON);
                out.push('"');
                i += t.len();
                last = i;
                found = true;
            }
            _ => i += 1,
        }
    }
    found.then(|| {
        out.push_str(&text[last..]);
        out
    })
}

/// Parses a text frame into a client message with the right error code:
/// not JSON at all, JSON with an unknown `type`, or a known type with bad
/// fields. A refused `update` header carries its `update_id` where the frame
/// has one, and says it was an update (its payload frame is swallowed).
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ParseRefusal> {
    // The common case in one pass; the slower path below only names the error.
    if let Ok(m) = serde_json::from_str::<ClientMessage>(text) {
        return Ok(m);
    }
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => match mark_non_finite_tokens(text).and_then(|t| serde_json::from_str(&t).ok()) {
            Some(v) => v,
            None => {
                return Err(ParseRefusal::plain(
                    ErrorCode::BadJson,
                    format!("frame is not valid JSON: {e}"),
                ))
            }
        },
    };
    let Some(kind) = value
        .get("type")
        .and_then(|t| t.as_str())
        .map(str::to_string)
    else {
        return Err(ParseRefusal::plain(
            ErrorCode::UnknownType,
            "message has no string field `type`".into(),
        ));
    };
    const KNOWN: [&str; 7] = crate::protocol::CLIENT_MESSAGE_TYPES;
    if !KNOWN.contains(&kind.as_str()) {
        return Err(ParseRefusal::plain(
            ErrorCode::UnknownType,
            format!(
                "unknown message type `{}` (known: {})",
                kind.escape_default(),
                KNOWN.join(", ")
            ),
        ));
    }
    let non_finite = value.as_object().and_then(|o| {
        o.iter()
            .find(|(_, v)| v.as_str() == Some(NON_FINITE_MARK))
            .map(|(k, _)| k.clone())
    });
    let update_id = (kind == "update")
        .then(|| {
            value
                .get("update_id")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
        .flatten()
        .filter(|id| id != NON_FINITE_MARK);
    let refusal = |code: ErrorCode, message: String| ParseRefusal {
        code,
        message,
        update_id: update_id.clone(),
        was_update: kind == "update",
    };
    if let Some(field) = non_finite {
        let code = match (kind.as_str(), field.as_str()) {
            ("update", "loss") => ErrorCode::BadLoss,
            ("eval" | "evaluator_report", _) => ErrorCode::BadEval,
            ("stats", _) => ErrorCode::BadStats,
            _ => ErrorCode::BadJson,
        };
        return Err(refusal(
            code,
            format!("`{field}` must be a finite number, not NaN or Infinity"),
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        let code = match kind.as_str() {
            "eval" | "evaluator_report" => ErrorCode::BadEval,
            // NaN or Infinity inside the arrays arrive here, marked.
            "stats" => ErrorCode::BadStats,
            _ => ErrorCode::BadJson,
        };
        refusal(code, format!("bad `{kind}` message: {e}"))
    })
}

/// An update header waiting for its binary frame.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateHeader {
    pub update_id: String,
    pub base_version: u64,
    pub num_examples: u64,
    pub loss: Option<f64>,
}

impl UpdateHeader {
    /// The placeholder that swallows the payload of a refused header.
    pub(super) fn swallow() -> Self {
        UpdateHeader {
            update_id: String::new(),
            base_version: 0,
            num_examples: 0,
            loss: None,
        }
    }

    pub(super) fn is_swallow(&self) -> bool {
        self.update_id.is_empty()
    }
}

pub fn validate_update_header(h: &UpdateHeader) -> Result<(), Refusal> {
    if h.update_id.is_empty()
        || h.update_id.len() > 128
        || h.update_id.chars().any(|c| c.is_control())
    {
        return Err(Refusal::new(
            ErrorCode::BadUpdateId,
            "update_id must be 1 to 128 printable characters".into(),
        ));
    }
    if h.num_examples == 0 {
        return Err(Refusal::new(
            ErrorCode::BadNumExamples,
            "num_examples is 0; an update must come from at least one example".into(),
        ));
    }
    if let Some(l) = h.loss {
        if !l.is_finite() {
            return Err(Refusal::new(
                ErrorCode::BadLoss,
                "loss must be a finite number".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_parsing_codes() {
        assert_eq!(
            parse_client_message("nope").unwrap_err().code,
            ErrorCode::BadJson
        );
        assert_eq!(
            parse_client_message(r#"{"type":"dance"}"#)
                .unwrap_err()
                .code,
            ErrorCode::UnknownType
        );
        let r = parse_client_message(r#"{"type":"update"}"#).unwrap_err();
        assert_eq!(
            (r.code, r.was_update, r.update_id),
            (ErrorCode::BadJson, true, None)
        );
        assert!(matches!(
            parse_client_message(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping { nonce: None })
        ));
    }

    /// Python's json.dumps writes a NaN loss as a bare token: the header is
    /// still read far enough to refuse it as `bad_loss` with its id.
    #[test]
    fn update_headers_that_are_not_json_keep_their_id_where_possible() {
        let r = parse_client_message(
            r#"{"type": "update", "update_id": "py-1", "base_version": 3, "num_examples": 10, "loss": NaN}"#,
        )
        .unwrap_err();
        assert_eq!(r.code, ErrorCode::BadLoss);
        assert_eq!(r.update_id.as_deref(), Some("py-1"));
        assert!(r.was_update);
        let r = parse_client_message(
            r#"{"type":"update","update_id":"a NaN \"Infinity\"","base_version":-Infinity,"num_examples":1}"#,
        )
        .unwrap_err();
        assert_eq!(r.code, ErrorCode::BadJson);
        assert_eq!(r.update_id.as_deref(), Some("a NaN \"Infinity\""));
        let r = parse_client_message(
            r#"{"type":"update","update_id":"x","base_version":"three","num_examples":1}"#,
        )
        .unwrap_err();
        assert_eq!(
            (r.code, r.update_id.as_deref()),
            (ErrorCode::BadJson, Some("x"))
        );
        let r = parse_client_message(r#"{"type":"eval","version":1,"global_accuracy":NaN}"#)
            .unwrap_err();
        assert_eq!((r.code, r.was_update), (ErrorCode::BadEval, false));
        // Tokens inside strings and longer words are left alone.
        assert_eq!(mark_non_finite_tokens(r#"{"a":"NaN","b":NaNa}"#), None);
        assert_eq!(
            parse_client_message("{not json").unwrap_err().update_id,
            None
        );
    }

    #[test]
    fn update_header_checks() {
        let ok = UpdateHeader {
            update_id: "a".into(),
            base_version: 0,
            num_examples: 1,
            loss: Some(0.1),
        };
        assert!(validate_update_header(&ok).is_ok());
        let mut h = ok.clone();
        h.num_examples = 0;
        assert_eq!(
            validate_update_header(&h).unwrap_err().code,
            ErrorCode::BadNumExamples
        );
        let mut h = ok.clone();
        h.update_id = String::new();
        assert_eq!(
            validate_update_header(&h).unwrap_err().code,
            ErrorCode::BadUpdateId
        );
        let mut h = ok;
        h.loss = Some(f64::NAN);
        assert_eq!(
            validate_update_header(&h).unwrap_err().code,
            ErrorCode::BadLoss
        );
    }
}
