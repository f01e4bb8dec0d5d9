//! The Kubernetes manifests in `deploy/kubernetes/` against the code they run. No cluster runs
//! here, so this checks what can be checked without one: every object parses as its Kubernetes
//! type, the kustomization lists every file, each Deployment runs a service this binary has
//! under the name the autoscaler scales, every `MLMESH_*` setting is one the service accepts
//! (with the values given), Services select pods and ports that exist, volumes and secrets
//! are declared, and the autoscaler's role allows exactly what its backend calls.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Container, Namespace, PersistentVolumeClaim, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use mlmesh_kit::{ServerConfig, Sources};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

#[derive(Default)]
struct Manifests {
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    claims: BTreeSet<String>,
    accounts: BTreeSet<String>,
    roles: Vec<Role>,
    bindings: Vec<RoleBinding>,
}

fn parse<T: serde::de::DeserializeOwned>(file: &str, doc: Value) -> T {
    serde_json::from_value(doc).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn load() -> Manifests {
    let kustomization: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(dir().join("kustomization.yaml")).unwrap())
            .unwrap();
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization.yaml lists every manifest");

    let mut m = Manifests::default();
    for file in &listed {
        let text = std::fs::read_to_string(dir().join(file)).unwrap();
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        for doc in docs {
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            let api = doc["apiVersion"].as_str().unwrap_or_default().to_string();
            match (api.as_str(), kind.as_str()) {
                ("apps/v1", "Deployment") => m.deployments.push(parse(file, doc)),
                ("v1", "Service") => m.services.push(parse(file, doc)),
                ("v1", "PersistentVolumeClaim") => {
                    let claim: PersistentVolumeClaim = parse(file, doc);
                    m.claims.insert(claim.metadata.name.unwrap());
                }
                ("v1", "ServiceAccount") => {
                    let account: ServiceAccount = parse(file, doc);
                    m.accounts.insert(account.metadata.name.unwrap());
                }
                ("v1", "Namespace") => {
                    let ns: Namespace = parse(file, doc);
                    assert_eq!(
                        ns.metadata.name.as_deref(),
                        kustomization["namespace"].as_str()
                    );
                }
                ("rbac.authorization.k8s.io/v1", "Role") => m.roles.push(parse(file, doc)),
                ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                    m.bindings.push(parse(file, doc));
                }
                other => panic!("{file}: unexpected object {other:?}"),
            }
        }
    }
    m
}

fn pod(deployment: &Deployment) -> &k8s_openapi::api::core::v1::PodSpec {
    let spec = deployment.spec.as_ref().expect("a Deployment has a spec");
    spec.template
        .spec
        .as_ref()
        .expect("a pod template has a spec")
}

/// The services this binary runs (`mlmesh serve <service>`).
fn known_services() -> BTreeSet<&'static str> {
    [
        mlmesh_registry::SERVICE,
        mlmesh_data::SERVICE,
        mlmesh_gateway::SERVICE,
        mlmesh_autoscaler::SERVICE,
        mlmesh_dashboard::SERVICE,
        "model-trees",
        "model-linear",
        "model-neural",
        "model-onnx",
    ]
    .into()
}

/// The service a container runs, from `serve <service> …`.
fn served(container: &Container) -> String {
    let args = container.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("serve"), "{args:?}");
    args[1].clone()
}

/// Loads `section` as the binary does and checks it.
fn valid<T: serde::de::DeserializeOwned + Default>(
    sources: &Sources,
    section: &str,
    check: impl Fn(&T) -> Result<(), mlmesh_kit::ConfigError>,
) {
    let config: T = sources
        .load(section)
        .unwrap_or_else(|e| panic!("{section}: {e}"));
    check(&config).unwrap_or_else(|e| panic!("{section}: {e}"));
}

/// Loads each section the container's `MLMESH_*` variables touch, as the binary does; an
/// unknown key or a value of the wrong type fails here as it would fail the pod.
fn check_settings(service: &str, container: &Container) {
    let env: std::collections::HashMap<String, String> = container
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|v| v.name.starts_with("MLMESH_"))
        .map(|v| (v.name, v.value.unwrap_or_default()))
        .collect();
    for name in env.keys() {
        assert!(
            name.contains("__"),
            "{service}: {name} is not a setting (the binary ignores it); use MLMESH_SECTION__KEY"
        );
    }
    let sources = Sources {
        env,
        ..Sources::default()
    };
    let server: ServerConfig = sources
        .load("server")
        .unwrap_or_else(|e| panic!("{service}: {e}"));
    let needs_store =
        ["data", "gateway", "autoscaler"].contains(&service) || service.starts_with("model-");
    assert_eq!(
        server.data_dir.is_some(),
        needs_store,
        "{service}: data dir"
    );
    assert!(
        server.advertise_url.is_some(),
        "{service}: replicas must advertise an address other pods can reach"
    );
    match service {
        "autoscaler" => valid::<mlmesh_autoscaler::Config>(&sources, service, |c| c.validate()),
        "gateway" => valid::<mlmesh_gateway::Config>(&sources, service, |c| c.validate()),
        "data" => valid::<mlmesh_data::Config>(&sources, service, |c| c.validate()),
        "registry" => valid::<mlmesh_registry::Config>(&sources, service, |c| c.validate()),
        "dashboard" => valid::<mlmesh_dashboard::Config>(&sources, service, |c| c.validate()),
        _ => valid::<mlmesh_model::Config>(&sources, "model", |c| {
            let mut c = c.clone();
            c.family = service.trim_start_matches("model-").to_string();
            c.validate()
        }),
    }
}

#[test]
fn kubernetes_manifests_match_the_code() {
    let m = load();
    let known = known_services();
    let mut by_service: BTreeMap<String, &Deployment> = BTreeMap::new();
    for deployment in &m.deployments {
        let name = deployment.metadata.name.clone().unwrap();
        let spec = deployment.spec.as_ref().unwrap();
        let pod = spec.template.spec.as_ref().unwrap();
        let labels = spec.template.metadata.as_ref().unwrap().labels.clone();
        let selector = spec.selector.match_labels.clone().unwrap();
        for (k, v) in &selector {
            assert_eq!(labels.as_ref().unwrap().get(k), Some(v), "{name}: selector");
        }
        assert_eq!(pod.containers.len(), 1, "{name}");
        let container = &pod.containers[0];
        let service = served(container);
        assert!(
            known.contains(service.as_str()),
            "{name} runs unknown {service}"
        );
        let autoscaler = mlmesh_autoscaler::Config::default();
        assert_eq!(
            name,
            autoscaler.kube_settings().deployment_for(&service),
            "Deployments are named as the autoscaler looks for them"
        );
        let args = container.args.clone().unwrap();
        let registry = args
            .windows(2)
            .find(|w| w[0] == "--registry")
            .map(|w| w[1].clone())
            .unwrap_or_else(|| panic!("{name}: no --registry"));
        assert_eq!(registry, "http://mlmesh-registry:8080");
        for probe in [&container.readiness_probe, &container.liveness_probe] {
            let path = probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .clone();
            assert!(
                matches!(
                    path.as_deref(),
                    Some("/v2/health/ready" | "/v2/health/live")
                ),
                "{name}: probe {path:?}"
            );
        }
        check_settings(&service, container);
        let volumes: BTreeMap<String, _> = pod
            .volumes
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|v| (v.name.clone(), v))
            .collect();
        for mount in container.volume_mounts.clone().unwrap_or_default() {
            let volume = volumes
                .get(&mount.name)
                .unwrap_or_else(|| panic!("{name}: no volume {}", mount.name));
            if let Some(claim) = &volume.persistent_volume_claim {
                assert!(m.claims.contains(&claim.claim_name), "{name}: claim");
            }
            if let Some(secret) = &volume.secret {
                assert_eq!(secret.secret_name.as_deref(), Some("mlmesh-admin"));
            }
        }
        by_service.insert(service, deployment);
    }
    assert!(
        by_service.contains_key("registry"),
        "the registry is deployed"
    );

    // Every Service selects a Deployment's pods and a port they name.
    for service in &m.services {
        let name = service.metadata.name.clone().unwrap();
        let spec = service.spec.as_ref().unwrap();
        let selector = spec.selector.clone().unwrap();
        let target = m
            .deployments
            .iter()
            .find(|d| {
                let labels = d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap();
                let labels = labels.labels.clone().unwrap();
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .unwrap_or_else(|| panic!("Service {name} selects no pods"));
        let ports: BTreeSet<String> = pod(target).containers[0]
            .ports
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| p.name)
            .collect();
        for port in spec.ports.clone().unwrap() {
            let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(t)) =
                port.target_port
            else {
                panic!("{name}: name the target port");
            };
            assert!(ports.contains(&t), "{name}: port {t}");
        }
    }

    // The autoscaler: every service it scales has a Deployment, and its account may get and
    // patch deployments/scale (what the backend calls), nothing more.
    let autoscaler = by_service["autoscaler"];
    let pod = pod(autoscaler);
    let account = pod.service_account_name.clone().unwrap();
    assert!(m.accounts.contains(&account));
    let scale = pod.containers[0]
        .env
        .clone()
        .unwrap()
        .into_iter()
        .find(|v| v.name == "MLMESH_AUTOSCALER__SCALE")
        .and_then(|v| v.value)
        .unwrap();
    for service in scale.split(',') {
        assert!(
            by_service.contains_key(service),
            "{service} is scaled but not deployed"
        );
    }
    let binding = m
        .bindings
        .iter()
        .find(|b| {
            b.subjects
                .iter()
                .flatten()
                .any(|s| s.kind == "ServiceAccount" && s.name == account)
        })
        .expect("the autoscaler's account is bound to a role");
    let role = m
        .roles
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(binding.role_ref.name.as_str()))
        .expect("the bound role exists");
    let rules = role.rules.clone().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].api_groups.as_deref(),
        Some(&["apps".to_string()][..])
    );
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["deployments/scale".to_string()][..])
    );
    let verbs: BTreeSet<&str> = rules[0].verbs.iter().map(String::as_str).collect();
    assert_eq!(verbs, BTreeSet::from(["get", "patch"]));
}
