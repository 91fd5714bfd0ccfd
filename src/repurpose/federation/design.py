"""The study design a site ran, as recorded in its package and checked in every distributed round.

Owns `site_design`: the shared protocol's design when the config names one (after checking that the
config does not contradict it), else the config's own design. Both the site package
(`repurpose.federation.package`) and the site's side of the distributed fit
(`repurpose.federation.distributed`) read it from here, so neither imports the other for it.
Imports `repurpose.protocol` only.
"""

from __future__ import annotations

import logging
from typing import Any

from repurpose.protocol import design_differences, design_of_config, read_protocol

log = logging.getLogger(__name__)


class SiteDesignError(ValueError):
    """The site's config contradicts the protocol it names."""


def site_design(config: dict[str, Any]) -> dict[str, Any]:
    """The design a site ran: its protocol's (checked against the config) or, without protocol, the config's."""
    ran = design_of_config(config)
    if not config.get("protocol"):
        log.warning("no shared protocol named (config key `protocol`): the package records this config's design")
        return ran
    design = read_protocol(config["protocol"])
    differing = [d for d in design_differences(design, ran) if d[0] != "disclosure.min_cell"]
    if differing:
        raise SiteDesignError(f"the config's design differs from its protocol {config['protocol']}: {differing}")
    return design
