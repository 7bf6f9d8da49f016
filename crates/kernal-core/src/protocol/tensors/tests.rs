use super::*;

#[test]
fn accumulate_from_bytes() {
    let l = layout();
    let a: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let bytes = l.encode(&a, None).unwrap();
    let mut acc = vec![1.0f32; 8];
    l.accumulate(&bytes, &mut acc, 0.5).unwrap();
    assert_eq!(acc, a.iter().map(|v| 1.0 + 0.5 * v).collect::<Vec<_>>());
    assert_eq!(
        l.sum_squares(&bytes).unwrap(),
        a.iter().map(|v| (*v as f64).powi(2)).sum::<f64>()
    );
    let h = l.encode_as(&a, None, Dtype::F16).unwrap();
    assert_eq!(
        l.sum_squares(&h).unwrap(),
        a.iter().map(|v| (*v as f64).powi(2)).sum::<f64>()
    );
    // One pass gives the norm and refuses what validation refuses.
    let long = ModelLayout::new(vec![("w".into(), vec![1001])]);
    let vals: Vec<f32> = (0..1001).map(|i| (i % 13) as f32 - 6.0).collect();
    let want: f64 = vals.iter().map(|v| (*v as f64).powi(2)).sum();
    let enc = long.encode(&vals, None).unwrap();
    assert_eq!(long.check_sum_squares(&enc).unwrap(), want);
    let mut huge = vals.clone();
    huge[1000] = f32::MAX;
    let enc = long.encode(&huge, None).unwrap();
    assert!(long.check_sum_squares(&enc).unwrap().is_finite());
    huge[999] = f32::INFINITY;
    let enc = long.encode(&huge, None).unwrap();
    let e = long.check_sum_squares(&enc).unwrap_err();
    assert_eq!(e.code, ErrorCode::NonFinite);
    assert!(e.message.contains("index 999"), "{}", e.message);
}

fn layout() -> ModelLayout {
    ModelLayout::new(vec![("w".into(), vec![2, 3]), ("b".into(), vec![2])])
}

#[test]
fn round_trip_and_reference_reader() {
    let l = layout();
    let flat: Vec<f32> = (0..8).map(|i| i as f32 * 0.5).collect();
    let mut meta = HashMap::new();
    meta.insert("version".to_string(), "3".to_string());
    let bytes = l.encode(&flat, Some(&meta)).unwrap();
    // The reference parser accepts what we wrote.
    let (n, m) = SafeTensors::read_metadata(&bytes).unwrap();
    assert!(n % 8 == 0 || (8 + n) % 8 == 0);
    assert_eq!(m.metadata().as_ref().unwrap()["version"], "3");
    assert_eq!(l.decode(&bytes).unwrap(), flat);
}

#[test]
fn half_precision_round_trip() {
    let l = layout();
    let flat: Vec<f32> = (0..8).map(|i| i as f32 * 0.25).collect();
    let bytes = l.encode_as(&flat, None, Dtype::F16).unwrap();
    assert_eq!(l.decode(&bytes).unwrap(), flat);
    let bytes = l.encode_as(&flat, None, Dtype::BF16).unwrap();
    assert_eq!(l.decode(&bytes).unwrap(), flat);
}

#[test]
fn refuses_mismatch_and_nan() {
    let l = layout();
    let other = ModelLayout::new(vec![("w".into(), vec![3, 2]), ("b".into(), vec![2])]);
    let bytes = other.encode(&[0.0; 8], None).unwrap();
    assert_eq!(
        l.decode(&bytes).unwrap_err().code,
        ErrorCode::TensorMismatch
    );
    let mut flat = vec![0.0f32; 8];
    flat[7] = f32::NAN;
    let bytes = l.encode(&flat, None).unwrap();
    assert_eq!(l.decode(&bytes).unwrap_err().code, ErrorCode::NonFinite);
    assert_eq!(
        l.decode(b"garbage").unwrap_err().code,
        ErrorCode::BadSafetensors
    );
    let extra = ModelLayout::new(vec![
        ("w".into(), vec![2, 3]),
        ("b".into(), vec![2]),
        ("z".into(), vec![1]),
    ]);
    let bytes = extra.encode(&[0.0; 9], None).unwrap();
    assert_eq!(
        l.decode(&bytes).unwrap_err().code,
        ErrorCode::TensorMismatch
    );
}

#[test]
fn a_windowed_visit_sees_what_a_whole_one_does() {
    let l = ModelLayout::with_dtypes(vec![
        ("a".into(), vec![5, 3], TensorDtype::F32),
        ("b".into(), vec![7], TensorDtype::F16),
        ("c".into(), vec![], TensorDtype::F32),
        ("n".into(), vec![3], TensorDtype::I64),
    ]);
    let flat: Vec<f32> = (0..l.num_params()).map(|i| (i % 7) as f32 - 3.0).collect();
    let bytes = l.encode_as(&flat, None, Dtype::F32).unwrap();
    let mut whole = vec![0.5f32; flat.len()];
    l.accumulate(&bytes, &mut whole, 0.25).unwrap();
    for w in [4, 8, 12, 1 << 20] {
        let mut seen = 0usize;
        let mut done = |b: &[u8]| {
            assert!(b.len() <= w.max(8));
            seen += b.len();
        };
        let mut acc = vec![0.5f32; flat.len()];
        let window = Window {
            bytes: w,
            done: Some(&mut done),
        };
        l.accumulate_windowed(&bytes, &mut acc, 0.25, window)
            .unwrap();
        assert_eq!(acc, whole, "window {w}");
        assert_eq!(
            seen,
            bytes.len() - 8 - u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
        );
        let s = l
            .check_sum_squares_windowed(
                &bytes,
                Window {
                    bytes: w,
                    done: None,
                },
            )
            .unwrap();
        assert!(
            (s - l.check_sum_squares(&bytes).unwrap()).abs() < 1e-9,
            "window {w}"
        );
    }
    // A non-finite value is found, with its index in the tensor, in any window.
    let mut bad = flat.clone();
    bad[11] = f32::NAN;
    let bytes = l.encode_as(&bad, None, Dtype::F32).unwrap();
    let mut acc = vec![0.0f32; flat.len()];
    let e = l
        .accumulate_windowed(
            &bytes,
            &mut acc,
            1.0,
            Window {
                bytes: 8,
                done: None,
            },
        )
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NonFinite);
    assert!(e.message.contains("index 11"), "{}", e.message);
}

#[test]
fn an_f32_header_and_the_weights_memory_are_the_encoding() {
    let l = ModelLayout::new(vec![("w".into(), vec![2, 3]), ("b".into(), vec![3])]);
    let flat: Vec<f32> = (0..9).map(|i| i as f32 * 0.5 - 1.0).collect();
    let mut meta = HashMap::new();
    meta.insert("version".to_string(), "12".to_string());
    let mut parts = l.encode_f32_header(9, Some(&meta)).unwrap();
    parts.extend(flat.iter().flat_map(|v| v.to_le_bytes()));
    assert_eq!(parts, l.encode(&flat, Some(&meta)).unwrap());
    assert!(l.encode_f32_header(8, None).is_none());
    let ints = ModelLayout::with_dtypes(vec![("n".into(), vec![1], TensorDtype::I64)]);
    assert!(ints.encode_f32_header(1, None).is_none());
}
