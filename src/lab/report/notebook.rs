//! The report as a Jupyter notebook (nbformat 4.5): each section's text as a markdown cell,
//! each figure as a code cell whose saved output is the SVG itself, so the notebook shows
//! everything without being run. Run, the cells read the same files the report came from.

use serde_json::{json, Value};

use super::{Block, Section, Table};

pub(super) fn render(
    title: &str,
    intro: &str,
    sections: &[Section],
    data_dir: &str,
) -> anyhow::Result<String> {
    let mut cells = Vec::new();
    let mut id = 0;
    let mut next_id = || {
        id += 1;
        format!("cell-{id}")
    };
    cells.push(markdown(next_id(), &format!("# {title}\n\n{intro}")));
    cells.push(code(
        next_id(),
        &format!(
            "# The data behind every figure: one row per point, as in points.csv.\n\
             import csv, json, pathlib\n\
             from IPython.display import SVG, display\n\
             folder = pathlib.Path({})\n\
             meta = json.loads((folder / \"meta.json\").read_text())\n\
             with open(folder / \"points.csv\") as f:\n    points = list(csv.DictReader(f))\n\
             print(len(points), \"points of\", meta[\"workload\"])",
            serde_json::to_string(data_dir)?
        ),
        Vec::new(),
    ));
    for s in sections {
        let mut text = format!("## {}\n\n{}", s.title, s.text.join("\n\n"));
        for b in &s.blocks {
            if let Block::Table(t) = b {
                text += "\n\n";
                text += &table_markdown(t);
            }
            if let Block::Flamegraphs(flames) = b {
                for f in flames {
                    text += &format!("\n\n[{}]({}) (the interactive flamegraph)", f.caption, f.href);
                }
            }
        }
        cells.push(markdown(next_id(), &text));
        for b in &s.blocks {
            if let Block::Figure { name, svg } = b {
                let output = json!({
                    "output_type": "display_data",
                    "data": {
                        "image/svg+xml": svg,
                        "text/plain": format!("<figure {name}>"),
                    },
                    "metadata": {},
                });
                cells.push(code(
                    next_id(),
                    &format!("display(SVG(filename=\"figures/{name}.svg\"))"),
                    vec![output],
                ));
            }
        }
    }
    let notebook = json!({
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "cells": cells,
    });
    Ok(serde_json::to_string_pretty(&notebook)? + "\n")
}

fn markdown(id: String, text: &str) -> Value {
    json!({"cell_type": "markdown", "id": id, "metadata": {}, "source": text})
}

fn code(id: String, source: &str, outputs: Vec<Value>) -> Value {
    json!({
        "cell_type": "code",
        "id": id,
        "metadata": {},
        "execution_count": null,
        "source": source,
        "outputs": outputs,
    })
}

fn table_markdown(t: &Table) -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let line = |cells: &[String]| {
        let cells: Vec<String> = cells.iter().map(|c| cell(c)).collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut md = line(&t.header);
    md += &format!("|{}\n", " --- |".repeat(t.header.len()));
    for row in &t.rows {
        md += &line(row);
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notebook_is_nbformat_4_with_figures_as_outputs() {
        let sections = [Section {
            title: "S".into(),
            text: vec!["why".into()],
            blocks: vec![
                Block::Figure {
                    name: "f".into(),
                    svg: "<svg/>".into(),
                },
                Block::Table(Table {
                    header: vec!["a".into(), "b".into()],
                    rows: vec![vec!["1|2".into(), "3".into()]],
                    dimmed: vec![false],
                }),
            ],
        }];
        let text = render("T", "intro", &sections, ".").unwrap();
        let nb: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(nb["nbformat"], 4);
        let cells = nb["cells"].as_array().unwrap();
        assert_eq!(cells.len(), 4, "title, data, section text, one figure");
        assert!(cells[2]["source"].as_str().unwrap().contains("| 1\\|2 | 3 |"));
        assert_eq!(cells[3]["outputs"][0]["data"]["image/svg+xml"], "<svg/>");
        let ids: std::collections::HashSet<&str> = cells.iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), cells.len(), "cell ids are unique");
    }
}
