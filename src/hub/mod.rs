pub fn validate_model_name(name: &str) -> Result<(), String> {
    crate::protocol::validate_name(name)
}
