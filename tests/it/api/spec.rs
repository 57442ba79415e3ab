//! `docs/api.yaml` as the contract: loads the OpenAPI document and checks
//! an answer (status, content type, JSON body) against the operation it
//! documents. A small validator of the JSON Schema subset the spec uses:
//! `$ref`, `type`, `nullable`, `enum`, `required`, `properties`,
//! `additionalProperties: false`, `items`, `minimum`, `maximum`.

use std::collections::BTreeSet;

use serde_json::Value;

pub struct Spec {
    doc: Value,
}

/// Every (method, path template) the spec documents.
pub type Operations = BTreeSet<(String, String)>;

impl Spec {
    pub fn load() -> Spec {
        let path = splitvm_tests::workspace_root().join("docs/api.yaml");
        let text = std::fs::read_to_string(&path).expect("read docs/api.yaml");
        let doc: Value = serde_yaml::from_str(&text).expect("docs/api.yaml is valid YAML");
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        Spec { doc }
    }

    pub fn operations(&self) -> Operations {
        let mut ops = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().expect("paths") {
            for m in ["get", "put", "post", "delete", "patch"] {
                if item.get(m).is_some() {
                    ops.insert((m.to_uppercase(), path.clone()));
                }
            }
        }
        ops
    }

    /// The spec's path template matching a concrete path (query ignored).
    pub fn template_of(&self, path: &str) -> Option<String> {
        let path = path.split('?').next().unwrap_or(path);
        let segs: Vec<&str> = path.split('/').collect();
        self.doc["paths"]
            .as_object()?
            .keys()
            .find(|t| {
                let ts: Vec<&str> = t.split('/').collect();
                ts.len() == segs.len()
                    && ts
                        .iter()
                        .zip(&segs)
                        .all(|(t, s)| t == s || (t.starts_with('{') && !s.is_empty()))
            })
            .cloned()
    }

    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        let mut v = v;
        while let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let ptr = r.strip_prefix('#').expect("local $ref");
            v = self
                .doc
                .pointer(ptr)
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
        }
        v
    }

    /// Checks an answer to `method path` against the spec; returns the
    /// template it matched. Panics naming what does not fit.
    pub fn check(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> (String, String) {
        let template = self
            .template_of(path)
            .unwrap_or_else(|| panic!("{path} is not in docs/api.yaml"));
        let op = &self.doc["paths"][&template][method.to_lowercase()];
        assert!(!op.is_null(), "{method} {template} is not in docs/api.yaml");
        let resp = op["responses"]
            .get(status.to_string())
            .or_else(|| op["responses"].get("default"))
            .unwrap_or_else(|| {
                panic!(
                    "{method} {path}: status {status} is not documented; body {}",
                    String::from_utf8_lossy(body)
                )
            });
        let resp = self.resolve(resp);
        match resp.get("content").and_then(Value::as_object) {
            None => assert!(
                body.is_empty(),
                "{method} {path} {status}: documented without a body, got {}",
                String::from_utf8_lossy(body)
            ),
            Some(content) => {
                let ct = content_type
                    .unwrap_or_else(|| panic!("{method} {path} {status}: no Content-Type"));
                let media = content.get(ct).unwrap_or_else(|| {
                    panic!("{method} {path} {status}: Content-Type {ct:?} is not documented")
                });
                if ct == "application/json" {
                    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
                        panic!("{method} {path} {status}: body is not JSON ({e})")
                    });
                    if let Err(e) = self.validate(&media["schema"], &v, "$") {
                        panic!("{method} {path} {status}: {e}\nbody: {v}");
                    }
                } else {
                    assert!(std::str::from_utf8(body).is_ok(), "text body is UTF-8");
                }
            }
        }
        (method.to_string(), template)
    }

    /// Checks a JSON body against a named schema in `components/schemas`.
    pub fn check_schema(&self, name: &str, body: &[u8]) {
        let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!("{name}: not JSON ({e}): {}", String::from_utf8_lossy(body))
        });
        let schema = &self.doc["components"]["schemas"][name];
        assert!(!schema.is_null(), "no schema {name}");
        if let Err(e) = self.validate(schema, &v, "$") {
            panic!("{name}: {e}\nbody: {v}");
        }
    }

    fn validate(&self, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
        let s = self.resolve(schema);
        if v.is_null() {
            return if s["nullable"] == Value::Bool(true) {
                Ok(())
            } else {
                Err(format!("{at}: null where the spec does not allow it"))
            };
        }
        if let Some(vals) = s.get("enum").and_then(Value::as_array) {
            if !vals.contains(v) {
                return Err(format!("{at}: {v} not in enum {vals:?}"));
            }
        }
        let ty = s.get("type").and_then(Value::as_str);
        let ok = match ty {
            None => true,
            Some("object") => v.is_object(),
            Some("array") => v.is_array(),
            Some("string") => v.is_string(),
            Some("integer") => v.is_i64() || v.is_u64(),
            Some("number") => v.is_number(),
            Some("boolean") => v.is_boolean(),
            Some(other) => return Err(format!("{at}: spec type {other} unsupported here")),
        };
        if !ok {
            return Err(format!("{at}: {v} is not of type {}", ty.unwrap_or("?")));
        }
        if let Some(n) = v.as_f64() {
            if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
                if n < min {
                    return Err(format!("{at}: {v} below minimum {min}"));
                }
            }
            if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
                if n > max {
                    return Err(format!("{at}: {v} above maximum {max}"));
                }
            }
        }
        if let Some(items) = v.as_array() {
            for (i, item) in items.iter().enumerate() {
                self.validate(&s["items"], item, &format!("{at}[{i}]"))?;
            }
        }
        if let Some(obj) = v.as_object() {
            let props = s.get("properties").and_then(Value::as_object);
            for req in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let key = req.as_str().unwrap_or_default();
                if !obj.contains_key(key) {
                    return Err(format!("{at}: required field {key} missing"));
                }
            }
            for (k, val) in obj {
                match props.and_then(|p| p.get(k)) {
                    Some(ps) => self.validate(ps, val, &format!("{at}.{k}"))?,
                    None if s["additionalProperties"] == Value::Bool(false) => {
                        return Err(format!("{at}: field {k} is not in the spec"))
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }
}

#[test]
fn api_spec_refs_resolve_and_schemas_match_the_rust_types() {
    let spec = Spec::load();
    // Every $ref in the document points somewhere.
    fn walk(spec: &Spec, v: &Value) {
        match v {
            Value::Object(m) => {
                if m.contains_key("$ref") {
                    spec.resolve(v);
                }
                m.values().for_each(|x| walk(spec, x));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(spec, x)),
            _ => {}
        }
    }
    walk(&spec, &spec.doc);
    // The Rust types serialize to what the schemas describe.
    use vmm_core::api::*;
    let vm = VmInfo {
        state: VmState::ShuttingDown,
        vcpus: 2,
        memory_bytes: 1 << 30,
        kernel: "/k".into(),
        cmdline: "console=ttyS0".into(),
        uptime_ms: 5,
        pid: 7,
    };
    spec.check_schema("VmInfo", &serde_json::to_vec(&vm).unwrap());
    for (pid, link) in [(None, None), (Some(3), Some(false))] {
        let d = DeviceInfo {
            name: "net0".into(),
            kind: "net".into(),
            socket: "/s".into(),
            backend_pid: pid,
            state: BackendState::Reconnecting,
            offered_features: 1 << 32,
            negotiated_features: 0,
            reconnects: 1,
            link_up: link,
        };
        spec.check_schema("DeviceInfo", &serde_json::to_vec(&d).unwrap());
    }
    let m = Metrics {
        devices: vec![DeviceMetrics::default()],
        vcpus: vec![VcpuMetrics::default()],
    };
    spec.check_schema("Metrics", &serde_json::to_vec(&m).unwrap());
    use vmm_core::api::routes::{LinkRequest, SwapRequest};
    spec.check_schema(
        "SwapRequest",
        &serde_json::to_vec(&SwapRequest {
            socket: "/x".into(),
        })
        .unwrap(),
    );
    spec.check_schema(
        "LinkRequest",
        &serde_json::to_vec(&LinkRequest { up: true }).unwrap(),
    );
    // And the validator does reject what does not fit.
    let bad = br#"{"state":"running","vcpus":1,"memory_bytes":1,"kernel":"k","cmdline":"","uptime_ms":1}"#;
    assert!(std::panic::catch_unwind(|| spec.check_schema("VmInfo", bad)).is_err());
    let extra = br#"{"error":"x","more":1}"#;
    assert!(std::panic::catch_unwind(|| spec.check_schema("Error", extra)).is_err());
}
