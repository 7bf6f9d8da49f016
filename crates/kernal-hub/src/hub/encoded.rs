//! A version as it is sent and stored: safetensors bytes in two parts.
//!
//! For a model whose tensors are all F32 (the common case) the bytes after
//! the header are the weights' own memory on a little-endian machine, so a
//! version is its header plus a view of the `Arc` that holds its weights:
//! the hub holds a 400 MB model once, not once as `f32`s and again as its
//! encoding (issue 22: hub RSS ≤ 2 × model + 200 MiB). Other models are
//! encoded whole into `head`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::protocol::tensors::TensorError;
use crate::protocol::ModelLayout;

/// One version's safetensors bytes: `head` then `body`.
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    pub head: Bytes,
    pub body: Bytes,
}

impl From<Bytes> for Encoded {
    fn from(bytes: Bytes) -> Encoded {
        Encoded::whole(bytes)
    }
}

/// The weights' memory as bytes (little-endian `f32`s).
struct F32Bytes(Arc<Vec<f32>>);

impl AsRef<[u8]> for F32Bytes {
    fn as_ref(&self) -> &[u8] {
        let v: &[f32] = &self.0;
        // SAFETY: any initialised f32 memory is valid as bytes, u8 has
        // alignment 1, and the length covers exactly the same memory.
        unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
    }
}

impl Encoded {
    /// Bytes encoded elsewhere, in one part.
    pub fn whole(bytes: Bytes) -> Encoded {
        Encoded {
            head: bytes,
            body: Bytes::new(),
        }
    }

    /// `weights` encoded in the layout's dtypes with `metadata`: a header
    /// and a view of the weights when they are all F32, else one copy.
    pub fn of(
        layout: &ModelLayout,
        weights: &Arc<Vec<f32>>,
        metadata: Option<&HashMap<String, String>>,
    ) -> Result<Encoded, TensorError> {
        match layout.encode_f32_header(weights.len(), metadata) {
            Some(head) => Ok(Encoded {
                head: Bytes::from(head),
                body: Bytes::from_owner(F32Bytes(weights.clone())),
            }),
            None => Ok(Encoded::whole(Bytes::from(
                layout.encode(weights, metadata)?,
            ))),
        }
    }

    /// A stored checkpoint of `layout` and the weights decoded from it: its
    /// own header and a view of the weights when they are all F32 (the
    /// bytes after the header are then exactly their memory), else whole.
    pub fn from_stored(layout: &ModelLayout, stored: Vec<u8>, weights: &Arc<Vec<f32>>) -> Encoded {
        let body = std::mem::size_of_val(weights.as_slice());
        match layout.encode_f32_header(weights.len(), None) {
            Some(_) if stored.len() > body => Encoded {
                head: Bytes::copy_from_slice(&stored[..stored.len() - body]),
                body: Bytes::from_owner(F32Bytes(weights.clone())),
            },
            _ => Encoded::whole(Bytes::from(stored)),
        }
    }

    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The two parts in order.
    pub fn parts(&self) -> [&[u8]; 2] {
        [&self.head, &self.body]
    }

    /// The bytes in one piece (a copy unless there is one part).
    pub fn to_bytes(&self) -> Bytes {
        if self.body.is_empty() {
            return self.head.clone();
        }
        let mut v = Vec::with_capacity(self.len());
        v.extend_from_slice(&self.head);
        v.extend_from_slice(&self.body);
        Bytes::from(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TensorDtype;

    #[test]
    fn a_two_part_version_is_byte_for_byte_the_encoding() {
        let l = ModelLayout::new(vec![("w".into(), vec![4, 5]), ("b".into(), vec![5])]);
        let w = Arc::new((0..25).map(|i| i as f32 / 3.0).collect::<Vec<f32>>());
        let mut meta = HashMap::new();
        meta.insert("version".to_string(), "7".to_string());
        let e = Encoded::of(&l, &w, Some(&meta)).unwrap();
        assert_eq!(e.body.len(), 100, "the body is the weights' memory");
        assert_eq!(e.to_bytes().to_vec(), l.encode(&w, Some(&meta)).unwrap());
        let ints = ModelLayout::with_dtypes(vec![("n".into(), vec![2], TensorDtype::I64)]);
        let e = Encoded::of(&ints, &Arc::new(vec![1.0, 2.0]), None).unwrap();
        assert!(e.body.is_empty());
        assert_eq!(
            e.to_bytes().to_vec(),
            ints.encode(&[1.0, 2.0], None).unwrap()
        );
    }
}
