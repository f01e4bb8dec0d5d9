//! The mlmesh SDK.
//!
//! - [`Client`]: typed `/v1` and `/v2` calls to the gateway (or any one service).
//! - [`Direct`]: the direct variant of ensembles: find model services through the registry,
//!   call the members concurrently and combine their answers with the same code the gateway
//!   runs, through the same resilience layers.
//! - [`Mesh`]: those layers over every discovered service — one [`mlmesh_resilience::Upstream`]
//!   per service — plus which service serves which model. The gateway is built on it too.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mlmesh_client::ClientError> {
//! use mlmesh_client::Client;
//! use serde_json::json;
//!
//! let client = Client::new("http://127.0.0.1:8080", Some("mlm_…".into()));
//! let request = serde_json::from_value(json!({"inputs": [
//!     {"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}
//! ]})).unwrap();
//! let answer = client.infer("iris-rf", &request).await?;
//! println!("{:?}", answer.outputs[0].data);
//! # Ok(()) }
//! ```
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mlmesh_client::Direct;
//! use mlmesh_protocol::gateway::EnsembleSpec;
//! use serde_json::json;
//!
//! // No gateway: members are found through the registry and called directly.
//! let direct = Direct::connect("http://127.0.0.1:7000").await?;
//! let spec: EnsembleSpec = serde_json::from_value(json!({
//!     "method": "soft_vote", "members": [{"model": "iris-rf"}, {"model": "iris-lr"}]
//! }))?;
//! let ensemble = direct.define("iris", &spec).await?;
//! let request = serde_json::from_value(json!({"inputs": [
//!     {"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}
//! ]}))?;
//! let answer = direct.infer(&ensemble, &request).await?;
//! println!("{:?}", answer.parameters);
//! # Ok(()) }
//! ```

pub mod direct;
pub mod gateway;
pub mod lookup;
pub mod mesh;
pub mod transport;

pub use direct::Direct;
pub use gateway::{Client, ClientError};
pub use mesh::Mesh;
pub use transport::Payload;
