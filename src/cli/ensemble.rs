//! `mlmesh ensemble create|ls|show|rm`.

use anyhow::{Context, bail};
use mlmesh_protocol::gateway::{
    Ensemble, EnsembleList, EnsembleSpec, MemberSpec, Policy, StackingSpec,
};

use super::{Platform, PlatformArgs, decode};

#[derive(Debug, clap::Subcommand)]
pub enum EnsembleCommand {
    /// Define (or replace) an ensemble.
    Create(CreateArgs),
    /// List ensembles.
    Ls,
    /// Show one ensemble.
    Show { name: String },
    /// Delete an ensemble.
    Rm { name: String },
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    pub name: String,
    /// hard_vote, weighted_vote, soft_vote, mean, median, weighted_mean or stacking.
    #[arg(long)]
    pub method: String,
    /// A member: MODEL[@VERSION][:WEIGHT] (repeatable).
    #[arg(long = "member", value_name = "MODEL[@VERSION][:WEIGHT]")]
    pub members: Vec<String>,
    /// A member on a foreign Open Inference Protocol server: URL#MODEL[:WEIGHT] (repeatable).
    #[arg(long = "foreign", value_name = "URL#MODEL[:WEIGHT]")]
    pub foreign: Vec<String>,
    /// How many members must answer (default: all).
    #[arg(long)]
    pub quorum: Option<usize>,
    /// One deadline for all members, in milliseconds (default 1000).
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// Stacking: the dataset the meta-model learns from.
    #[arg(long)]
    pub stacking_dataset: Option<String>,
    /// Stacking: the meta-model's algorithm.
    #[arg(long)]
    pub stacking_algorithm: Option<String>,
}

/// `MODEL[@VERSION][:WEIGHT]`.
pub fn parse_member(text: &str) -> anyhow::Result<MemberSpec> {
    let (rest, weight) = match text.rsplit_once(':') {
        Some((rest, w)) => (
            rest,
            Some(
                w.parse::<f64>()
                    .with_context(|| format!("member {text}: weight {w:?} is not a number"))?,
            ),
        ),
        None => (text, None),
    };
    let (model, version) = match rest.split_once('@') {
        Some((m, v)) => (m, Some(v.to_string())),
        None => (rest, None),
    };
    if model.is_empty() {
        bail!("member {text:?} has no model name");
    }
    Ok(MemberSpec {
        model: model.to_string(),
        version,
        weight,
        url: None,
        output: None,
        classes: None,
    })
}

fn parse_foreign(text: &str) -> anyhow::Result<MemberSpec> {
    let (url, rest) = text
        .split_once('#')
        .with_context(|| format!("foreign member {text:?} is not URL#MODEL"))?;
    let mut member = parse_member(rest)?;
    member.url = Some(url.to_string());
    Ok(member)
}

pub async fn run(command: EnsembleCommand, platform: &PlatformArgs) -> anyhow::Result<()> {
    let gateway = Platform::locate(platform, "gateway")?;
    match command {
        EnsembleCommand::Create(args) => {
            let mut members = args
                .members
                .iter()
                .map(|m| parse_member(m))
                .collect::<anyhow::Result<Vec<_>>>()?;
            for f in &args.foreign {
                members.push(parse_foreign(f)?);
            }
            let policy = (args.quorum.is_some() || args.deadline_ms.is_some()).then_some(Policy {
                quorum: args.quorum,
                deadline_ms: args.deadline_ms,
            });
            let stacking = args.stacking_dataset.map(|dataset| StackingSpec {
                dataset,
                algorithm: args.stacking_algorithm,
                kfold: None,
            });
            let spec = EnsembleSpec {
                method: args.method,
                members,
                policy,
                stacking,
            };
            let ensemble: Ensemble = decode(
                gateway
                    .request(
                        reqwest::Method::PUT,
                        &format!("/v1/ensembles/{}", args.name),
                    )
                    .json(&spec)
                    .send()
                    .await?,
            )
            .await?;
            print(&ensemble, platform.json)
        }
        EnsembleCommand::Ls => {
            let list: EnsembleList = gateway.get("/v1/ensembles").await?;
            if platform.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            println!("{:<24} {:<14} {:<8} members", "NAME", "METHOD", "QUORUM");
            for e in &list.ensembles {
                let members: Vec<String> = e.members.iter().map(|m| m.spec.model.clone()).collect();
                println!(
                    "{:<24} {:<14} {:<8} {}",
                    e.name,
                    e.method.name(),
                    e.policy.quorum.unwrap_or(e.members.len()),
                    members.join(", ")
                );
            }
            Ok(())
        }
        EnsembleCommand::Show { name } => {
            let ensemble: Ensemble = gateway.get(&format!("/v1/ensembles/{name}")).await?;
            print(&ensemble, true)
        }
        EnsembleCommand::Rm { name } => {
            let response = gateway
                .request(reqwest::Method::DELETE, &format!("/v1/ensembles/{name}"))
                .send()
                .await?;
            if !response.status().is_success() {
                let _: serde_json::Value = decode(response).await?;
            }
            println!("deleted ensemble {name}");
            Ok(())
        }
    }
}

fn print(ensemble: &Ensemble, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(ensemble)?);
        return Ok(());
    }
    println!(
        "ensemble {} ({}, {} members, quorum {})",
        ensemble.name,
        ensemble.method.name(),
        ensemble.members.len(),
        ensemble.policy.quorum.unwrap_or(ensemble.members.len())
    );
    for m in &ensemble.members {
        let at = m
            .spec
            .url
            .as_deref()
            .map(|u| format!(" at {u}"))
            .unwrap_or_default();
        let weight = m
            .spec
            .weight
            .map(|w| format!(" weight {w}"))
            .unwrap_or_default();
        println!("  {}{at}{weight} ({})", m.spec.model, m.task);
    }
    if let Some(s) = &ensemble.stacking {
        println!(
            "  meta-model {} v{} ({}) on {} rows of {}",
            s.meta_model, s.meta_version, s.algorithm, s.rows, s.dataset
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse() {
        let m = parse_member("rf@3:2.5").unwrap();
        assert_eq!(
            (m.model.as_str(), m.version.as_deref(), m.weight),
            ("rf", Some("3"), Some(2.5))
        );
        let m = parse_member("lr").unwrap();
        assert_eq!((m.version, m.weight), (None, None));
        assert!(parse_member("rf:heavy").is_err());
        let f = parse_foreign("http://127.0.0.1:9000#sk-rf:2").unwrap();
        assert_eq!(
            (f.url.as_deref(), f.model.as_str(), f.weight),
            (Some("http://127.0.0.1:9000"), "sk-rf", Some(2.0))
        );
    }
}
