//! Talking to an API server (kube-rs): server-side apply of rendered objects under the
//! field manager `chaosnet`, and removal of a run by its label. Errors name what to do:
//! no kubeconfig, an unreachable cluster, the verb and resource RBAC forbade.
//!
//! What it does not do: wait for readiness, map pods to agents, or inject faults. Tested
//! against a tower-test mock of the API server (no cluster runs here).

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::render::Object;

/// The field manager of every apply.
pub const FIELD_MANAGER: &str = "chaosnet";
/// The label that names a run on every object.
pub const RUN_LABEL: &str = "chaosnet.run";

/// Why a call to the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No kubeconfig and not inside a cluster.
    #[error(
        "no cluster configured: {0} (set KUBECONFIG or create ~/.kube/config, e.g. with `kind create cluster`)"
    )]
    NoConfig(String),
    /// The API server does not answer.
    #[error("the cluster at {url} does not answer: {detail}")]
    Unreachable {
        /// The API server.
        url: String,
        /// The transport's error.
        detail: String,
    },
    /// RBAC refused a call.
    #[error(
        "forbidden by RBAC: chaosnet needs `{verb}` on `{resource}` (see manifests/base/deployer-rbac.yaml): {message}"
    )]
    Forbidden {
        /// The verb, e.g. `patch`.
        verb: &'static str,
        /// The resource, e.g. `statefulsets`.
        resource: &'static str,
        /// The API server's message.
        message: String,
    },
    /// Any other refusal.
    #[error("{verb} {resource}/{name}: HTTP {code} {reason}: {message}")]
    Api {
        /// The verb.
        verb: &'static str,
        /// The resource.
        resource: &'static str,
        /// The object.
        name: String,
        /// The HTTP status.
        code: u16,
        /// The API's reason (`Conflict`, `Invalid`...).
        reason: String,
        /// The API's message.
        message: String,
    },
}

/// A client and where it points.
pub struct Cluster {
    client: Client,
    url: String,
}

impl Cluster {
    /// Connects with the kubeconfig (`KUBECONFIG`, `~/.kube/config`, `context` when given)
    /// or the in-cluster service account. Nothing is sent yet.
    ///
    /// # Errors
    /// [`ClusterError::NoConfig`] when neither is there or the kubeconfig is unusable.
    pub async fn connect(context: Option<&str>) -> Result<Cluster, ClusterError> {
        let config = match context {
            Some(c) => {
                let opts = KubeConfigOptions {
                    context: Some(c.to_string()),
                    ..KubeConfigOptions::default()
                };
                let kc = Kubeconfig::read().map_err(|e| ClusterError::NoConfig(e.to_string()))?;
                Config::from_custom_kubeconfig(kc, &opts)
                    .await
                    .map_err(|e| ClusterError::NoConfig(e.to_string()))?
            }
            None => Config::infer()
                .await
                .map_err(|e| ClusterError::NoConfig(e.to_string()))?,
        };
        let url = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(|e| ClusterError::NoConfig(e.to_string()))?;
        Ok(Cluster { client, url })
    }

    /// A cluster reached through `client` (tests: a tower-test mock).
    pub fn from_client(client: Client, url: &str) -> Cluster {
        Cluster {
            client,
            url: url.to_string(),
        }
    }

    /// Server-side applies every object in order (forcing ownership: chaosnet owns what
    /// it renders); returns `kind/name` of each.
    ///
    /// # Errors
    /// The first failing call, classified.
    pub async fn apply(&self, objects: &[Object]) -> Result<Vec<String>, ClusterError> {
        let mut done = Vec::with_capacity(objects.len());
        for o in objects {
            match o {
                Object::Namespace(x) => {
                    let api: Api<Namespace> = Api::all(self.client.clone());
                    self.apply_one(api, x, "namespaces").await?;
                }
                Object::ServiceAccount(x) => self.apply_ns(x, "serviceaccounts").await?,
                Object::Secret(x) => self.apply_ns(x, "secrets").await?,
                Object::Service(x) => self.apply_ns(x, "services").await?,
                Object::NetworkPolicy(x) => self.apply_ns(x, "networkpolicies").await?,
                Object::StatefulSet(x) => self.apply_ns(x, "statefulsets").await?,
            }
            done.push(o.id());
        }
        Ok(done)
    }

    /// Deletes the namespaces labelled with run `run` (every run's with `None`), and with
    /// them everything in them; returns their names. Idempotent: a namespace already gone
    /// is not an error, and it needs no local state (it works after a killed controller).
    ///
    /// # Errors
    /// A failing list or delete, classified.
    pub async fn delete_runs(&self, run: Option<&str>) -> Result<Vec<String>, ClusterError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let selector = match run {
            Some(r) => format!("{RUN_LABEL}={r}"),
            None => RUN_LABEL.to_string(),
        };
        let list = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| self.classify(e, "list", "namespaces", &selector))?;
        let mut gone = Vec::new();
        for ns in list.items {
            let Some(name) = ns.metadata.name else {
                continue;
            };
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => return Err(self.classify(e, "delete", "namespaces", &name)),
            }
            gone.push(name);
        }
        Ok(gone)
    }

    async fn apply_ns<K>(&self, obj: &K, resource: &'static str) -> Result<(), ClusterError>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + Debug,
        K::DynamicType: Default,
    {
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let api: Api<K> = Api::namespaced(self.client.clone(), &ns);
        self.apply_one(api, obj, resource).await
    }

    async fn apply_one<K>(
        &self,
        api: Api<K>,
        obj: &K,
        resource: &'static str,
    ) -> Result<(), ClusterError>
    where
        K: Resource + Clone + DeserializeOwned + Serialize + Debug,
    {
        let name = obj.meta().name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await
        .map(|_| ())
        .map_err(|e| self.classify(e, "patch", resource, &name))
    }

    fn classify(
        &self,
        e: kube::Error,
        verb: &'static str,
        resource: &'static str,
        name: &str,
    ) -> ClusterError {
        match e {
            kube::Error::Api(s) if s.is_forbidden() => ClusterError::Forbidden {
                verb,
                resource,
                message: s.message.clone(),
            },
            kube::Error::Api(s) => ClusterError::Api {
                verb,
                resource,
                name: name.to_string(),
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
            },
            other => ClusterError::Unreachable {
                url: self.url.clone(),
                detail: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against a tower-test mock of the API server: this is NOT a cluster. Each test plays
    //! the server's side of every call and checks method, path, query and body.
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeSet;

    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use tower_test::mock::{self, Handle};

    use super::*;
    use crate::plan::RunId;
    use crate::planner;
    use crate::runtime::kube::render::{KubeOptions, render};
    use crate::scenario::Scenario;

    type Mock = Handle<Request<Body>, Response<Body>>;

    fn cluster() -> (Cluster, Mock) {
        let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "default");
        (Cluster::from_client(client, "https://mock.invalid"), handle)
    }

    fn objects() -> Vec<Object> {
        let plan = planner::plan(&Scenario::default_scenario(), &RunId("abc123".into())).unwrap();
        let opts = KubeOptions {
            namespace: "chaosnet-abc123".into(),
            image: "chaosnet-agent:0.1.0".into(),
            api_token: "0123456789abcdef0123".into(),
            storage_mib: 256,
        };
        render(&plan, &opts).unwrap()
    }

    async fn body(r: Request<Body>) -> (http::request::Parts, serde_json::Value) {
        let (parts, body) = r.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let v = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (parts, v)
    }

    fn json(code: StatusCode, v: &serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(v).unwrap()))
            .unwrap()
    }

    fn status(code: u16, reason: &str, message: &str) -> serde_json::Value {
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "code": code, "reason": reason, "message": message
        })
    }

    /// The (verb, resource) RBAC would check for one request.
    fn rbac_of(method: &Method, path: &str) -> Vec<(String, String)> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // /api/v1/<res>[/<name>] or /api/v1/namespaces/<ns>/<res>/<name>, /apis/<g>/<v>/...
        let rest = if parts[0] == "api" {
            &parts[2..]
        } else {
            &parts[3..]
        };
        let (resource, named) = match rest {
            ["namespaces", _, res, _name] => (*res, true),
            [res, _name] => (*res, true),
            [res] => (*res, false),
            other => panic!("unexpected path {other:?}"),
        };
        let verbs: &[&str] = match (method.as_str(), named) {
            // Server-side apply creates what does not exist: patch and create.
            ("PATCH", true) => &["patch", "create"],
            ("GET", false) => &["list"],
            ("GET", true) => &["get"],
            ("DELETE", true) => &["delete"],
            other => panic!("unexpected call {other:?}"),
        };
        verbs
            .iter()
            .map(|v| (v.to_string(), resource.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn apply_is_a_server_side_apply_of_every_object_in_order() {
        let (c, mut server) = cluster();
        let objects = objects();
        let expect: Vec<serde_json::Value> = objects
            .iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect();
        let n = objects.len();
        let serving = tokio::spawn(async move {
            let mut seen = Vec::new();
            for want in expect {
                let (req, send) = server.next_request().await.expect("a request");
                let (parts, got) = body(req).await;
                assert_eq!(parts.method, Method::PATCH);
                let query = parts.uri.query().unwrap_or_default().to_string();
                assert!(query.contains("fieldManager=chaosnet"), "{query}");
                assert!(query.contains("force=true"), "{query}");
                assert_eq!(
                    parts.headers.get("content-type").unwrap(),
                    "application/apply-patch+yaml"
                );
                assert_eq!(got, want, "the body is the rendered object");
                seen.push(parts.uri.path().to_string());
                send.send_response(json(StatusCode::OK, &got));
            }
            seen
        });
        let applied = c.apply(&objects).await.unwrap();
        let paths = serving.await.unwrap();
        assert_eq!(applied.len(), n);
        assert_eq!(paths[0], "/api/v1/namespaces/chaosnet-abc123");
        assert!(
            paths.contains(
                &"/apis/apps/v1/namespaces/chaosnet-abc123/statefulsets/seed".to_string()
            )
        );
        assert!(
            paths.contains(
                &"/apis/networking.k8s.io/v1/namespaces/chaosnet-abc123/networkpolicies/chaosnet"
                    .to_string()
            )
        );
    }

    #[tokio::test]
    async fn down_deletes_the_runs_namespaces_and_a_gone_one_is_fine() {
        let (c, mut server) = cluster();
        let serving = tokio::spawn(async move {
            let (req, send) = server.next_request().await.unwrap();
            assert_eq!(req.method(), Method::GET);
            assert_eq!(req.uri().path(), "/api/v1/namespaces");
            let q = req.uri().query().unwrap_or_default().to_string();
            assert!(q.contains("labelSelector=chaosnet.run%3Dabc123"), "{q}");
            send.send_response(json(
                StatusCode::OK,
                &serde_json::json!({"kind": "NamespaceList", "apiVersion": "v1", "metadata": {},
                    "items": [{"metadata": {"name": "chaosnet-abc123"}}]}),
            ));
            let (req, send) = server.next_request().await.unwrap();
            assert_eq!(req.method(), Method::DELETE);
            assert_eq!(req.uri().path(), "/api/v1/namespaces/chaosnet-abc123");
            // Deleted meanwhile (a second `down`, or the namespace controller): 404.
            send.send_response(json(
                StatusCode::NOT_FOUND,
                &status(404, "NotFound", "namespaces \"chaosnet-abc123\" not found"),
            ));
        });
        let gone = c.delete_runs(Some("abc123")).await.unwrap();
        serving.await.unwrap();
        assert_eq!(gone, vec!["chaosnet-abc123".to_string()]);
    }

    #[tokio::test]
    async fn refusals_name_the_object_or_the_missing_permission() {
        let objects = objects();
        // 409: somebody else's field manager owns a field and force was refused.
        let (c, mut server) = cluster();
        let serving = tokio::spawn(async move {
            let (_, send) = server.next_request().await.unwrap();
            send.send_response(json(
                StatusCode::CONFLICT,
                &status(409, "Conflict", "Apply failed with 1 conflict"),
            ));
        });
        let e = c.apply(&objects).await.unwrap_err();
        serving.await.unwrap();
        assert!(
            matches!(
                &e,
                ClusterError::Api {
                    code: 409,
                    verb: "patch",
                    resource: "namespaces",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("namespaces/chaosnet-abc123"), "{e}");
        // 403 on the second object: RBAC, with the verb and resource named.
        let (c, mut server) = cluster();
        let serving = tokio::spawn(async move {
            let (req, send) = server.next_request().await.unwrap();
            let (_, got) = body(req).await;
            send.send_response(json(StatusCode::OK, &got));
            let (_, send) = server.next_request().await.unwrap();
            send.send_response(json(
                StatusCode::FORBIDDEN,
                &status(
                    403,
                    "Forbidden",
                    "serviceaccounts is forbidden: User \"dev\" cannot patch",
                ),
            ));
        });
        let e = c.apply(&objects).await.unwrap_err();
        serving.await.unwrap();
        assert!(
            matches!(
                &e,
                ClusterError::Forbidden {
                    verb: "patch",
                    resource: "serviceaccounts",
                    ..
                }
            ),
            "{e}"
        );
        // 410 Gone on the list (an expired resourceVersion upstream): an API error, not a panic.
        let (c, mut server) = cluster();
        let serving = tokio::spawn(async move {
            let (_, send) = server.next_request().await.unwrap();
            send.send_response(json(
                StatusCode::GONE,
                &status(410, "Expired", "too old resource version"),
            ));
        });
        let e = c.delete_runs(None).await.unwrap_err();
        serving.await.unwrap();
        assert!(
            matches!(
                &e,
                ClusterError::Api {
                    code: 410,
                    verb: "list",
                    ..
                }
            ),
            "{e}"
        );
    }

    /// The deployer ClusterRole in manifests/ grants exactly the verbs and resources that
    /// `apply` and `down` use, derived from the requests they make to the mock.
    #[tokio::test]
    async fn the_deployer_role_grants_exactly_what_apply_and_down_use() {
        let mut needed: BTreeSet<(String, String)> = BTreeSet::new();
        let (c, mut server) = cluster();
        let objects = objects();
        let n = objects.len();
        let serving = tokio::spawn(async move {
            let mut calls = Vec::new();
            for _ in 0..n {
                let (req, send) = server.next_request().await.unwrap();
                let (parts, got) = body(req).await;
                calls.push((parts.method.clone(), parts.uri.path().to_string()));
                send.send_response(json(StatusCode::OK, &got));
            }
            let (req, send) = server.next_request().await.unwrap();
            calls.push((req.method().clone(), req.uri().path().to_string()));
            send.send_response(json(
                StatusCode::OK,
                &serde_json::json!({"kind": "NamespaceList", "apiVersion": "v1", "metadata": {},
                    "items": [{"metadata": {"name": "chaosnet-abc123"}}]}),
            ));
            let (req, send) = server.next_request().await.unwrap();
            calls.push((req.method().clone(), req.uri().path().to_string()));
            send.send_response(json(
                StatusCode::OK,
                &serde_json::json!({"kind": "Namespace",
                "apiVersion": "v1", "metadata": {"name": "chaosnet-abc123"}}),
            ));
            calls
        });
        c.apply(&objects).await.unwrap();
        c.delete_runs(Some("abc123")).await.unwrap();
        for (m, p) in serving.await.unwrap() {
            needed.extend(rbac_of(&m, &p));
        }
        let role_text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/base/deployer-rbac.yaml"
        ))
        .unwrap();
        let role: serde_json::Value = serde_saphyr::from_str(&role_text).unwrap();
        assert_eq!(role["kind"], "ClusterRole");
        let mut granted: BTreeSet<(String, String)> = BTreeSet::new();
        for rule in role["rules"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                for v in rule["verbs"].as_array().unwrap() {
                    granted.insert((v.as_str().unwrap().into(), r.as_str().unwrap().into()));
                }
            }
        }
        assert_eq!(granted, needed, "granted (left) vs used (right)");
    }
}
