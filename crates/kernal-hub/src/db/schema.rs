// Hand-written to match migrations/; the migration round-trip test keeps them honest.

diesel::table! {
    models (name) {
        name -> Text,
        architecture -> Text,
        layout -> Text,
        settings -> Nullable<Text>,
        created_at -> Text,
        normalisation -> Nullable<Text>,
        evalset -> Nullable<Text>,
    }
}

diesel::table! {
    versions (id) {
        id -> BigInt,
        model -> Text,
        version -> BigInt,
        parent -> Nullable<BigInt>,
        num_updates -> Integer,
        weights -> Binary,
        metrics -> Text,
        created_at -> Text,
        weights_file -> Nullable<Text>,
    }
}

diesel::table! {
    trainers (name) {
        name -> Text,
        specialty -> Text,
        token_hash -> Text,
        revoked -> Bool,
        created_at -> Text,
        last_seen -> Nullable<Text>,
    }
}

diesel::table! {
    sessions (id) {
        id -> Text,
        trainer -> Text,
        model -> Text,
        remote -> Nullable<Text>,
        connected_at -> Text,
        disconnected_at -> Nullable<Text>,
        close_reason -> Nullable<Text>,
    }
}

diesel::table! {
    updates (id) {
        id -> BigInt,
        update_id -> Text,
        trainer -> Text,
        model -> Text,
        base_version -> BigInt,
        num_examples -> BigInt,
        staleness -> BigInt,
        loss -> Nullable<Double>,
        bytes -> BigInt,
        status -> Text,
        applied_in_version -> Nullable<BigInt>,
        refusal_code -> Nullable<Text>,
        refusal_message -> Nullable<Text>,
        received_at -> Text,
        payload -> Nullable<Binary>,
        payload_file -> Nullable<Text>,
    }
}

diesel::table! {
    evaluations (id) {
        id -> BigInt,
        model -> Text,
        version -> BigInt,
        trainer -> Text,
        specialty -> Text,
        specialty_accuracy -> Nullable<Double>,
        global_accuracy -> Nullable<Double>,
        loss -> Nullable<Double>,
        num_examples -> Nullable<BigInt>,
        created_at -> Text,
    }
}

diesel::table! {
    metrics (id) {
        id -> BigInt,
        ts -> Text,
        name -> Text,
        labels -> Text,
        value -> Double,
    }
}

diesel::table! {
    harness_runs (id) {
        id -> BigInt,
        scenario -> Text,
        passed -> Bool,
        collective_accuracy -> Nullable<Double>,
        report -> Text,
        started_at -> Text,
        finished_at -> Text,
    }
}

diesel::table! {
    model_deletions (id) {
        id -> BigInt,
        model -> Text,
        architecture -> Text,
        created_at -> Text,
        last_version -> BigInt,
        versions -> BigInt,
        updates -> BigInt,
        evaluations -> BigInt,
        files -> BigInt,
        forced -> Bool,
        disconnected -> BigInt,
        deleted_at -> Text,
    }
}

diesel::table! {
    evaluators (id) {
        id -> BigInt,
        model -> Text,
        name -> Text,
        token_hash -> Text,
        created_at -> Text,
        revoked_at -> Nullable<Text>,
        reports -> BigInt,
        last_report_at -> Nullable<Text>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    models,
    versions,
    trainers,
    sessions,
    updates,
    evaluations,
    metrics,
    harness_runs,
    model_deletions,
    evaluators,
);
