#!/usr/bin/env python3
"""Renders charts/silo with real Helm (v4, through the helm-python-sdk package, offline) into
charts/rendered/{default,custom}.yaml. tests/install_manifests.rs checks that its own small
template renderer gives the same objects, so these files must be regenerated whenever a
template or values.yaml changes:

    python3.12 -m venv /tmp/helm && /tmp/helm/bin/pip install helm-python-sdk
    /tmp/helm/bin/python charts/rendered/render.py
"""
import pathlib

import yaml
from helm_python import Chart

HERE = pathlib.Path(__file__).resolve().parent
chart = Chart.load(str(HERE.parent / "silo"))
cases = {
    "default": {},
    "custom": yaml.safe_load((HERE / "custom-values.yaml").read_text()),
}
for name, values in cases.items():
    manifests = chart.render(values=values, name="silo", namespace="silo-system", is_install=True)
    docs = [
        f"# Source: {path}\n{text.strip()}\n"
        for path, text in sorted(manifests.items())
        if path.endswith(".yaml") and text.strip()
    ]
    header = f"# Rendered by Helm from charts/silo ({name} values) by render.py. Do not edit.\n"
    (HERE / f"{name}.yaml").write_text(header + "---\n".join(docs))
    print(f"{name}.yaml: {len(docs)} templates")
