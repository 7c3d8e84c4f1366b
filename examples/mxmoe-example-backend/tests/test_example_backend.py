"""The example backend passes the conformance kit, discovered through its entry point."""

import mxmoe
from mxmoe.testing import BackendConformance


class TestExampleReference(BackendConformance):
    backend = "example-reference"
    device = "cpu"


def test_discovered_through_entry_point():
    record = next(r for r in mxmoe.explain(mxmoe.preset("gpt-oss-mini"), "cpu")
                  if r.name == "example-reference")
    assert record.distribution == "mxmoe-example-backend"
    assert record.version == "0.1.0"
    assert record.supported and record.padded_sizes == (512, 512)


def test_pads_odd_sizes():
    config = mxmoe.MoEConfig(num_experts=4, top_k=2, hidden_size=96, intermediate_size=160)
    record = next(r for r in mxmoe.explain(config, "cpu") if r.name == "example-reference")
    assert record.padded_sizes == (128, 192)
