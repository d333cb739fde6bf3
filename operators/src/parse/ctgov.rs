//! ClinicalTrials.gov API v2 study JSON (one study, or a page `{"studies": [...]}`).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{json_list, json_str, normalize, ParseOptions};
use crate::{Document, SourceKind, StageError};

/// A study, or a page of studies; `size` is the payload's length in bytes.
pub(crate) fn from_json(value: &Value, size: usize, options: &ParseOptions) -> Vec<Result<Document, StageError>> {
    super::page_or_one(value, "studies", size, options, parse_study)
}

fn parse_study(study: &Value, tenant: &str) -> Result<Document, StageError> {
    let protocol = study
        .get("protocolSection")
        .filter(|p| p.is_object())
        .ok_or_else(|| StageError::permanent("bad_record", "study has no `protocolSection` object"))?;
    let module = |name: &str| protocol.get(name).cloned().unwrap_or(Value::Null);
    let identification = module("identificationModule");
    let nct = json_str(&identification, "nctId").ok_or_else(|| {
        StageError::permanent("missing_id", "study has no protocolSection.identificationModule.nctId")
    })?;
    let valid = nct.len() == 11 && nct.starts_with("NCT") && nct[3..].chars().all(|c| c.is_ascii_digit());
    if !valid {
        return Err(StageError::permanent("bad_id", format!("`{nct}` is not an NCT id (NCT + 8 digits)")));
    }
    let title = json_str(&identification, "officialTitle")
        .or_else(|| json_str(&identification, "briefTitle"))
        .unwrap_or_default();

    let description = module("descriptionModule");
    let conditions_module = module("conditionsModule");
    let conditions = json_list(&conditions_module, "conditions");
    let keywords = json_list(&conditions_module, "keywords");
    let arms = module("armsInterventionsModule");
    let interventions_owned: Vec<Value> =
        arms.get("interventions").and_then(Value::as_array).cloned().unwrap_or_default();
    let intervention_lines: Vec<String> = interventions_owned
        .iter()
        .filter_map(|i| {
            let name = json_str(i, "name")?;
            let kind = json_str(i, "type").map(|t| format!("{t}: ")).unwrap_or_default();
            let about = json_str(i, "description").map(|d| format!(" — {d}")).unwrap_or_default();
            Some(format!("{kind}{name}{about}"))
        })
        .collect();
    let eligibility = module("eligibilityModule");
    let criteria = eligibility.get("eligibilityCriteria").and_then(Value::as_str).map(paragraphs).unwrap_or_default();

    let mut sections = Vec::new();
    if let Some(summary) = json_str(&description, "briefSummary") {
        sections.push(("brief_summary".to_string(), summary));
    }
    if let Some(detail) = description.get("detailedDescription").and_then(Value::as_str).map(paragraphs) {
        sections.push(("detailed_description".to_string(), detail));
    }
    if !conditions.is_empty() {
        sections.push(("conditions".to_string(), format!("Conditions: {}.", conditions.join("; "))));
    }
    if !intervention_lines.is_empty() {
        sections.push(("interventions".to_string(), intervention_lines.join("\n\n")));
    }
    if !criteria.is_empty() {
        sections.push(("eligibility".to_string(), criteria));
    }
    if sections.is_empty() && !title.is_empty() {
        sections.push(("title".to_string(), title.clone()));
    }

    let mut metadata = BTreeMap::new();
    let mut put = |key: &str, values: Vec<String>| {
        if !values.is_empty() {
            metadata.insert(key.to_string(), values);
        }
    };
    put("conditions", conditions);
    put("keywords", keywords);
    put("interventions", interventions_owned.iter().filter_map(|i| json_str(i, "name")).collect());
    put("phases", json_list(&module("designModule"), "phases"));
    put("study_type", json_str(&module("designModule"), "studyType").into_iter().collect());
    put("status", json_str(&module("statusModule"), "overallStatus").into_iter().collect());
    put("brief_title", json_str(&identification, "briefTitle").into_iter().collect());
    for key in ["sex", "minimumAge", "maximumAge"] {
        put(key, json_str(&eligibility, key).into_iter().collect());
    }
    Ok(Document::new(format!("nct:{nct}"), tenant, SourceKind::ClinicalTrials, title, sections, metadata))
}

/// Keeps paragraph breaks (blank lines), normalises whitespace inside each.
fn paragraphs(text: &str) -> String {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.trim().is_empty() {
                out.push(normalize(&current));
            }
            current.clear();
        } else {
            current.push(' ');
            current.push_str(line);
        }
    }
    if !current.trim().is_empty() {
        out.push(normalize(&current));
    }
    out.join("\n\n")
}
