use super::*;
use weir_plugin_sdk::testing::{load, MockBody, MockRequest};

fn policy(config: &str) -> RequestSizeLimit {
    load(config).unwrap()
}

fn error(config: &str) -> String {
    load::<RequestSizeLimit>(config).unwrap_err()
}

#[test]
fn sizes_parse_with_units() {
    assert_eq!(parse_size("100").unwrap(), 100);
    assert_eq!(parse_size("1KB").unwrap(), 1000);
    assert_eq!(parse_size("1 kib").unwrap(), 1024);
    assert_eq!(parse_size("10MiB").unwrap(), 10 << 20);
    assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
    assert_eq!(parse_size(" 7 b ").unwrap(), 7);
    assert!(parse_size("MiB").unwrap_err().contains("not a size"));
    assert!(parse_size("-1").unwrap_err().contains("not a size"));
    assert!(parse_size("1.5MiB")
        .unwrap_err()
        .contains("unknown unit `.5mib`"));
    assert!(parse_size("10 furlongs")
        .unwrap_err()
        .contains("unknown unit `furlongs`"));
    assert!(parse_size("99999999999999GiB")
        .unwrap_err()
        .contains("too large"));
}

#[test]
fn config_errors_name_the_key() {
    assert_eq!(policy(r#"{"max_size": 10}"#).max, 10);
    assert_eq!(policy(r#"{"max_size": "1KiB"}"#).max, 1024);
    assert!(error(r#"{"max_size": 0}"#).contains("max_size: must be at least 1 byte"));
    assert!(error(r#"{"max_size": "lots"}"#).starts_with("max_size: `lots` is not a size"));
    assert!(error("{}").contains("missing field `max_size`"));
    assert!(error(r#"{"max_size": 1, "extra": 2}"#).contains("unknown field `extra`"));
    assert!(error(r#"{"max_size": -5}"#).starts_with("invalid config"));
}

#[test]
fn a_declared_length_over_the_limit_is_refused_on_the_headers() {
    let p = policy(r#"{"max_size": 100}"#);
    let mut req = MockRequest::post("/upload")
        .header("content-length", "101")
        .header("x-request-id", "r-9");
    let d = p.on_request(&mut req);
    assert_eq!(d.status(), Some(413));
    let body = d.body_json().unwrap();
    assert_eq!(body["error"], "payload_too_large");
    assert_eq!(body["message"], "the request body is larger than 100 bytes");
    assert_eq!(body["request_id"], "r-9");

    // At the limit it passes, and the body need not be counted.
    let mut req = MockRequest::post("/upload").header("content-length", "100");
    assert!(p.on_request(&mut req).is_continue());
    assert_eq!(p.request_body(&req), BodyAccess::Ignore);
}

#[test]
fn a_chunked_body_is_counted_as_it_streams() {
    let p = policy(r#"{"max_size": 100}"#);
    let mut req = MockRequest::post("/upload").header("transfer-encoding", "chunked");
    assert!(p.on_request(&mut req).is_continue());
    assert_eq!(p.request_body(&req), BodyAccess::Chunks);
    assert!(p
        .on_request_body(&req, &MockBody::chunk(&[0; 60]))
        .is_continue());
    assert!(p
        .on_request_body(&req, &MockBody::chunk(&[0; 40]).after(60).last())
        .is_continue());
    let d = p.on_request_body(&req, &MockBody::chunk(&[0; 41]).after(60));
    assert_eq!(d.status(), Some(413));
}

#[test]
fn a_malformed_length_is_left_to_the_gateway_and_counted() {
    // The gateway refuses bad framing before plugins run; if one got here, counting
    // the body still bounds it.
    let p = policy(r#"{"max_size": 10}"#);
    let mut req = MockRequest::post("/").header("content-length", "ten");
    assert!(p.on_request(&mut req).is_continue());
    assert_eq!(p.request_body(&req), BodyAccess::Chunks);
    let huge = "9".repeat(40);
    let mut req = MockRequest::post("/").header("content-length", &huge);
    assert!(p.on_request(&mut req).is_continue());
    assert_eq!(p.request_body(&req), BodyAccess::Chunks);
}
