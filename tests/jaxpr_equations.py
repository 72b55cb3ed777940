"""Every equation of a jaxpr, for tests that check what a program computes around the Pallas kernels."""

import jax
import jax.extend


def equations(jaxpr):
    """The equations of ``jaxpr`` and of the jaxprs nested in their parameters, depth first; a Pallas kernel's
    own body is not entered."""
    for eqn in jaxpr.eqns:
        yield eqn
        if eqn.primitive.name != "pallas_call":
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from equations(sub)
