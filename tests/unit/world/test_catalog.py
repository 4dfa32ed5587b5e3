"""The run's user domains as one object (fl_sim.world.catalog): names, equality for the per-process caches,
and the names a dataset may not take."""

import re

import pytest

from fl_sim import FlSimError
from fl_sim.config import UserDomainConfig
from fl_sim.world.catalog import NO_DOMAINS, DomainCatalog, is_user_domain


def test_a_catalog_is_its_names_settings_and_cache():
    a = DomainCatalog({"fruit": UserDomainConfig(path="/data/fruit")}, "/cache")
    same = DomainCatalog({"fruit": UserDomainConfig(path="/data/fruit")}, "/cache")
    other = DomainCatalog({"fruit": UserDomainConfig(path="/data/fruit", test_fraction=0.5)}, "/cache")
    assert a == same and hash(a) == hash(same) and a != other and a != DomainCatalog(a.specs, "/elsewhere")
    assert "fruit" in a and a.names() == ["fruit"] and a and not NO_DOMAINS and "source" not in a


def test_built_in_names_and_combinations_are_refused():
    for name in ("dusk", "novel+dusk"):
        with pytest.raises(FlSimError, match=f"domains.{re.escape(name)}: the name is taken"):
            DomainCatalog({name: UserDomainConfig(path="/x")})
    assert is_user_domain("fruit") and not is_user_domain("dusk") and not is_user_domain("novel+dusk")
