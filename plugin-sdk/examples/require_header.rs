//! Answers 400 unless the request carries a configured header; tells upstream the route.
use serde::Deserialize;
use weir_plugin_sdk::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    header: String,
}

pub struct RequireHeader {
    header: String,
}

impl Policy for RequireHeader {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        weir_plugin_sdk::validate_header(&config.header, "")?;
        Ok(RequireHeader {
            header: config.header.to_ascii_lowercase(),
        })
    }

    fn on_request(&self, req: &mut dyn Request) -> Decision {
        if !req.headers().contains(&self.header) {
            let message = format!("send a `{}` header", self.header);
            return Decision::error(400, "missing_header", &message, req);
        }
        let route = req.route().unwrap_or("none").to_string();
        req.headers_mut().set("x-weir-route", &route);
        Decision::Continue
    }
}

weir_plugin_sdk::export_policy!(RequireHeader);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::testing::{self, MockRequest};

    #[test]
    fn rejects_a_request_without_the_header() {
        let policy: RequireHeader = testing::load(r#"{"header": "X-Tenant"}"#).unwrap();
        let mut req = MockRequest::get("/v1/users").header("x-request-id", "r-1");
        let decision = policy.on_request(&mut req);
        assert_eq!(decision.status(), Some(400));
        assert_eq!(decision.body_json().unwrap()["error"], "missing_header");
        assert_eq!(decision.body_json().unwrap()["request_id"], "r-1");
    }

    #[test]
    fn passes_a_request_with_the_header_and_names_the_route() {
        let policy: RequireHeader = testing::load(r#"{"header": "x-tenant"}"#).unwrap();
        let mut req = MockRequest::get("/v1/users?x=1")
            .header("x-tenant", "acme")
            .with_route("users-v1");
        assert!(policy.on_request(&mut req).is_continue());
        assert_eq!(
            req.headers().get("x-weir-route").as_deref(),
            Some("users-v1")
        );
    }

    #[test]
    fn refuses_a_bad_config() {
        let err = testing::load::<RequireHeader>(r#"{"header": "bad header"}"#).err();
        assert!(err.unwrap().contains("not a valid header name"));
        let err = testing::load::<RequireHeader>(r#"{"heder": "x"}"#).err();
        assert!(err.unwrap().contains("unknown field `heder`"));
    }
}
