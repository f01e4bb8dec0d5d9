//! Where scaling decisions are carried out.
//!
//! - *local*: the `mlmesh up` supervisor's control API starts replicas of the service and
//!   stops the extra ones it started (the base replica stays).
//! - *kubernetes*: the `scale` subresource of the service's Deployment is patched through the
//!   Kubernetes API (kube-rs); the Deployment controller starts and stops the pods, which
//!   register with the registry like any replica.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use mlmesh_protocol::control::{ReplicaList, StartReplica};

/// A backend, chosen by `autoscaler.backend`.
#[derive(Clone)]
pub enum Backend {
    Local(LocalBackend),
    Kubernetes(Box<KubeBackend>),
}

impl Backend {
    /// The replicas `service` has now (desired, whether or not they are ready yet).
    pub async fn replicas(&self, service: &str) -> Result<u32, String> {
        match self {
            Self::Local(b) => b.replicas(service).await.map(|(n, _)| n),
            Self::Kubernetes(b) => b.replicas(service).await,
        }
    }

    /// Brings `service` to `to` replicas.
    pub async fn scale(&self, service: &str, to: u32) -> Result<(), String> {
        match self {
            Self::Local(b) => b.scale(service, to).await,
            Self::Kubernetes(b) => b.scale(service, to).await,
        }
    }
}

/// How to reach the Kubernetes API, from the `autoscaler.kubernetes_*` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeSettings {
    /// The API server; `None`: the pod's service account, else the local kubeconfig.
    pub url: Option<String>,
    /// Namespace of the Deployments; `None`: the pod's own (or the kubeconfig's).
    pub namespace: Option<String>,
    /// A file holding a bearer token for `url`.
    pub token_file: Option<String>,
    /// Deployment name for a service: `{service}` is replaced by the service's name.
    pub deployment: String,
}

impl KubeSettings {
    /// The Deployment that runs `service`.
    pub fn deployment_for(&self, service: &str) -> String {
        self.deployment.replace("{service}", service)
    }
}

/// Whether `name` can name a Deployment (an RFC 1123 DNS subdomain, as Kubernetes checks).
pub fn valid_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Scales Deployments through their `scale` subresource.
#[derive(Clone)]
pub struct KubeBackend {
    api: Api<Deployment>,
    namespace: String,
    settings: KubeSettings,
}

impl KubeBackend {
    /// Builds the client (no request is made yet).
    pub async fn connect(settings: KubeSettings) -> Result<Self, String> {
        let mut config = match &settings.url {
            Some(url) => kube::Config::new(
                url.parse()
                    .map_err(|e| format!("autoscaler.kubernetes_url {url:?}: {e}"))?,
            ),
            None => kube::Config::infer().await.map_err(|e| {
                format!(
                    "no Kubernetes API to talk to (not in a pod, no kubeconfig): {e}; \
                     set autoscaler.kubernetes_url"
                )
            })?,
        };
        if let Some(file) = &settings.token_file {
            // Read here (once) rather than handed to kube as `token_file`: kube sends the
            // file's bytes as they are, and a token written with `echo` ends in a newline that
            // no HTTP header may carry. In a pod, leave it unset: the service account's token
            // is used and re-read as it rotates.
            let token = std::fs::read_to_string(file)
                .map_err(|e| format!("autoscaler.kubernetes_token_file {file}: {e}"))?;
            let token = token.trim();
            if token.is_empty() {
                return Err(format!("autoscaler.kubernetes_token_file {file} is empty"));
            }
            config.auth_info.token = Some(secrecy::SecretString::from(token.to_string()));
        }
        if let Some(namespace) = &settings.namespace {
            config.default_namespace.clone_from(namespace);
        }
        // A decision is due every few seconds: do not wait minutes for a stuck API server.
        config.read_timeout = Some(Duration::from_secs(10));
        config.connect_timeout = Some(Duration::from_secs(5));
        let namespace = config.default_namespace.clone();
        let client = kube::Client::try_from(config)
            .map_err(|e| format!("cannot build the Kubernetes client: {e}"))?;
        Ok(Self {
            api: Api::namespaced(client, &namespace),
            namespace,
            settings,
        })
    }

    fn explain(&self, name: &str, error: kube::Error) -> String {
        let ns = &self.namespace;
        match error {
            kube::Error::Api(status) => match status.code {
                401 => format!(
                    "the Kubernetes API refused our credentials: {}",
                    status.message
                ),
                403 => format!(
                    "not allowed to scale deployment {ns}/{name}: the autoscaler's service \
                     account needs get and patch on deployments/scale (see \
                     deploy/kubernetes/autoscaler.yaml): {}",
                    status.message
                ),
                404 => format!("deployment {ns}/{name} not found"),
                code => format!("Kubernetes API answered {code}: {}", status.message),
            },
            other => format!("Kubernetes API unreachable: {other}"),
        }
    }

    pub async fn replicas(&self, service: &str) -> Result<u32, String> {
        let name = self.settings.deployment_for(service);
        let scale = self
            .api
            .get_scale(&name)
            .await
            .map_err(|e| self.explain(&name, e))?;
        let replicas = scale.spec.and_then(|s| s.replicas).unwrap_or(0);
        Ok(u32::try_from(replicas).unwrap_or(0))
    }

    pub async fn scale(&self, service: &str, to: u32) -> Result<(), String> {
        let name = self.settings.deployment_for(service);
        // A merge patch of `spec.replicas` alone, the request `kubectl scale` makes: it leaves
        // every other field of the Deployment to its owner (the manifests, or GitOps).
        let patch = serde_json::json!({ "spec": { "replicas": to } });
        self.api
            .patch_scale(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| self.explain(&name, e))?;
        Ok(())
    }
}

/// Starts and stops replicas through the supervisor's control API.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    pub url: String,
    pub key: String,
    pub http: reqwest::Client,
}

impl LocalBackend {
    pub fn new(url: String, key: String) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self { url, key, http }
    }

    async fn list(&self) -> Result<ReplicaList, String> {
        let answer = self
            .http
            .get(format!("{}/v1/replicas", self.url))
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|e| format!("control API unreachable: {e}"))?;
        if !answer.status().is_success() {
            return Err(format!("control API answered {}", answer.status()));
        }
        answer
            .json()
            .await
            .map_err(|e| format!("control API answer: {e}"))
    }

    /// Replicas of `service`: (all, extra ones this backend may stop).
    pub async fn replicas(&self, service: &str) -> Result<(u32, Vec<String>), String> {
        let list = self.list().await?;
        let mine: Vec<_> = list
            .replicas
            .iter()
            .filter(|r| r.service == service)
            .collect();
        let extra = mine
            .iter()
            .filter(|r| !r.base)
            .map(|r| r.id.clone())
            .collect();
        Ok((mine.len() as u32, extra))
    }

    /// Brings `service` to `to` replicas.
    pub async fn scale(&self, service: &str, to: u32) -> Result<(), String> {
        let (now, mut extra) = self.replicas(service).await?;
        for _ in now..to {
            let answer = self
                .http
                .post(format!("{}/v1/replicas", self.url))
                .bearer_auth(&self.key)
                .json(&StartReplica {
                    service: service.to_string(),
                })
                .send()
                .await
                .map_err(|e| format!("cannot start a replica: {e}"))?;
            if !answer.status().is_success() {
                return Err(format!(
                    "starting a replica of {service}: {} {}",
                    answer.status(),
                    answer.text().await.unwrap_or_default()
                ));
            }
        }
        for _ in to..now {
            // Newest first: the longest-lived replicas keep their warm caches.
            let Some(id) = extra.pop() else {
                return Err(format!("{service} has no extra replica left to stop"));
            };
            let answer = self
                .http
                .delete(format!("{}/v1/replicas/{id}", self.url))
                .bearer_auth(&self.key)
                .send()
                .await
                .map_err(|e| format!("cannot stop {id}: {e}"))?;
            if !answer.status().is_success() {
                return Err(format!("stopping {id}: {}", answer.status()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use mlmesh_testkit::TestServer;
    use mlmesh_testkit::fake_kube::FakeKube;

    use super::*;

    async fn backend(fake: &TestServer, token: &str) -> (KubeBackend, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        let backend = KubeBackend::connect(KubeSettings {
            url: Some(fake.url.clone()),
            namespace: Some("ml".into()),
            token_file: Some(token_file.display().to_string()),
            deployment: "mlmesh-{service}".into(),
        })
        .await
        .unwrap();
        (backend, dir)
    }

    #[tokio::test]
    async fn kubernetes_backend_reads_and_patches_the_deployments_scale() {
        let fake = FakeKube::new("sa-token");
        fake.add_deployment("ml", "mlmesh-model-trees", 1);
        let server = TestServer::start(fake.router()).await;
        let (kube, _dir) = backend(&server, "sa-token").await;

        assert_eq!(kube.replicas("model-trees").await.unwrap(), 1);
        kube.scale("model-trees", 3).await.unwrap();
        assert_eq!(fake.replicas("ml", "mlmesh-model-trees"), Some(3));
        assert_eq!(kube.replicas("model-trees").await.unwrap(), 3);
        let backend = Backend::Kubernetes(Box::new(kube));
        backend.scale("model-trees", 1).await.unwrap();
        assert_eq!(backend.replicas("model-trees").await.unwrap(), 1);

        let log = fake.log();
        let patches: Vec<_> = log.iter().filter(|s| s.method == "PATCH").collect();
        assert_eq!(patches.len(), 2);
        assert_eq!(
            patches[0].path,
            "/apis/apps/v1/namespaces/ml/deployments/mlmesh-model-trees/scale"
        );
        assert_eq!(
            patches[0].content_type.as_deref(),
            Some("application/merge-patch+json")
        );
        assert_eq!(
            patches[0].body,
            Some(serde_json::json!({"spec": {"replicas": 3}}))
        );
    }

    #[tokio::test]
    async fn kubernetes_errors_say_what_is_wrong() {
        let fake = FakeKube::new("sa-token");
        fake.add_deployment("ml", "mlmesh-model-trees", 2);
        let server = TestServer::start(fake.router()).await;

        let (kube, _dir) = backend(&server, "sa-token").await;
        let missing = kube.scale("model-linear", 2).await.unwrap_err();
        assert!(
            missing.contains("deployment ml/mlmesh-model-linear not found"),
            "{missing}"
        );

        let (wrong, _dir) = backend(&server, "stolen").await;
        let refused = wrong.replicas("model-trees").await.unwrap_err();
        assert!(refused.contains("refused our credentials"), "{refused}");
        assert_eq!(fake.replicas("ml", "mlmesh-model-trees"), Some(2));

        // Nothing listens on a closed port: the error names the API, not a panic.
        let closed = TestServer::start(axum::Router::new()).await;
        let url = closed.url.clone();
        drop(closed);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let gone = KubeBackend::connect(KubeSettings {
            url: Some(url),
            deployment: "{service}".into(),
            ..KubeSettings::default()
        })
        .await
        .unwrap();
        let error = gone.replicas("model-trees").await.unwrap_err();
        assert!(error.contains("unreachable"), "{error}");
    }

    #[tokio::test]
    async fn a_missing_or_empty_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        for (file, message) in [
            (dir.path().join("none"), "No such file"),
            (empty, "is empty"),
        ] {
            let error = KubeBackend::connect(KubeSettings {
                url: Some("http://127.0.0.1:9".into()),
                token_file: Some(file.display().to_string()),
                ..KubeSettings::default()
            })
            .await
            .err()
            .unwrap();
            assert!(error.contains(message), "{error}");
        }
    }

    #[test]
    fn deployment_names_are_checked() {
        assert!(valid_object_name("mlmesh-model-trees"));
        assert!(!valid_object_name("Model_Trees"));
        assert!(!valid_object_name("-x"));
        assert!(!valid_object_name(""));
    }
}
