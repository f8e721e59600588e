"""Half-cell open-circuit potentials: the electrode curves a full cell's OCV is made of.

Each curve is a published analytic fit, in volts against Li/Li+, of the lithium fraction
(stoichiometry) of the electrode's host. They are the prior of the electrode-level model
(``electrode.py``): a full-cell OCV is the difference of one positive and one negative curve over
fitted windows. A cell whose materials differ from every curve here is fitted badly, and the
fit says so through its residual; the curves are never taken as the answer for such a cell.

Materials name families (``graphite``, ``nmc``, ``nca``, ``lfp``): a chemistry preset allows a set
of them (``Chemistry.positive_materials``, ``negative_materials``) and every curve of each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from bess_edge.model import FloatArray

# Curves are evaluated inside (0, 1): several fits diverge or are undefined outside it
# (Safari & Delacourt's LFP takes a fractional power of 1 - y).
STO_EDGE = 1e-4
# Step of the central difference for dU/dsto (the fits are smooth on this scale).
SLOPE_STEP = 1e-5


@dataclass(frozen=True, slots=True)
class HalfCell:
    """One electrode's OCP curve and where it was published."""

    name: str
    material: str
    electrode: Literal["positive", "negative"]
    ocp: Callable[[FloatArray], FloatArray]

    def __call__(self, sto: FloatArray) -> FloatArray:
        """Potential [V vs Li/Li+] at a stoichiometry, held inside (0, 1)."""
        return self.ocp(np.clip(sto, STO_EDGE, 1.0 - STO_EDGE))

    def slope(self, sto: FloatArray) -> FloatArray:
        """dU/dsto [V], by a central difference inside (0, 1)."""
        x = np.clip(sto, STO_EDGE + SLOPE_STEP, 1.0 - STO_EDGE - SLOPE_STEP)
        return (self.ocp(x + SLOPE_STEP) - self.ocp(x - SLOPE_STEP)) / (2.0 * SLOPE_STEP)


def _graphite_chen2020(x: FloatArray) -> FloatArray:
    # LG M50 graphite-SiOx negative, GITT-measured half cell: Chen et al., J. Electrochem. Soc.
    # 167 (2020) 080534, eq. 8.
    return np.asarray(
        1.9793 * np.exp(-39.3631 * x)
        + 0.2482
        - 0.0909 * np.tanh(29.8538 * (x - 0.1234))
        - 0.04478 * np.tanh(14.9159 * (x - 0.2769))
        - 0.0205 * np.tanh(30.4444 * (x - 0.6103))
    )


def _graphite_mohtat2020(x: FloatArray) -> FloatArray:
    # Graphite of a graphite/NMC532 pouch: Mohtat, Lee, Sulzer, Siegel, Stefanopoulou,
    # "Differential Expansion and Voltage Model for Li-ion Batteries at Practical Charging
    # Rates", J. Electrochem. Soc. 167 (2020) 110561.
    return np.asarray(
        0.063
        + 0.8 * np.exp(-75.0 * (x + 0.001))
        - 0.0120 * np.tanh((x - 0.127) / 0.016)
        - 0.0118 * np.tanh((x - 0.155) / 0.016)
        - 0.0035 * np.tanh((x - 0.220) / 0.020)
        - 0.0095 * np.tanh((x - 0.190) / 0.013)
        - 0.0145 * np.tanh((x - 0.490) / 0.020)
        - 0.0800 * np.tanh((x - 1.030) / 0.055)
    )


def _graphite_kim2011(x: FloatArray) -> FloatArray:
    # Kim, Smith, Lee, Santhanagopalan, Pesaran, "Multi-domain modeling of lithium-ion
    # batteries", J. Electrochem. Soc. 158 (2011) A955 (their graphite/NCA pouch).
    return np.asarray(
        0.124
        + 1.5 * np.exp(-70.0 * x)
        - 0.0351 * np.tanh((x - 0.286) / 0.083)
        - 0.0045 * np.tanh((x - 0.9) / 0.119)
        - 0.035 * np.tanh((x - 0.99) / 0.05)
        - 0.0147 * np.tanh((x - 0.5) / 0.034)
        - 0.102 * np.tanh((x - 0.194) / 0.142)
        - 0.022 * np.tanh((x - 0.98) / 0.0164)
        - 0.011 * np.tanh((x - 0.124) / 0.0226)
        + 0.0155 * np.tanh((x - 0.105) / 0.029)
    )


def _graphite_mcmb_dualfoil(x: FloatArray) -> FloatArray:
    # MCMB 2528 graphite of Newman's Dualfoil (Doyle, Fuller, Newman; data by Bogatu, Telcordia
    # 2000), as used by Marquis et al., J. Electrochem. Soc. 166 (2019) A3693.
    return np.asarray(
        0.194
        + 1.5 * np.exp(-120.0 * x)
        + 0.0351 * np.tanh((x - 0.286) / 0.083)
        - 0.0045 * np.tanh((x - 0.849) / 0.119)
        - 0.035 * np.tanh((x - 0.9233) / 0.05)
        - 0.0147 * np.tanh((x - 0.5) / 0.034)
        - 0.102 * np.tanh((x - 0.194) / 0.142)
        - 0.022 * np.tanh((x - 0.9) / 0.0164)
        - 0.011 * np.tanh((x - 0.124) / 0.0226)
        + 0.0155 * np.tanh((x - 0.105) / 0.029)
    )


def _graphite_ecker2015(x: FloatArray) -> FloatArray:
    # Graphite of the Kokam SLPB 75106100 cell: Ecker et al., "Parameterization of a
    # physico-chemical model of a lithium-ion battery I", J. Electrochem. Soc. 162 (2015)
    # A1836, analytic fit of their half-cell data by Richardson et al., Electrochim. Acta 339
    # (2020) 135862.
    return np.asarray(
        0.716502 * np.exp(-369.028 * x)
        + 0.12193 * np.exp(-35.6478 * (x - 0.0530947))
        - 0.0189193 * np.tanh(21.1967 * (x - 0.196176))
        - 0.0169644 * np.tanh(27.1365 * (x - 0.312832))
        - 0.0199313 * np.tanh(28.5697 * (x - 0.614221))
        - 0.931153 * np.exp(36.328 * (x - 1.10743))
        + 0.140031
    )


def _graphite_safari2011(x: FloatArray) -> FloatArray:
    # Graphite of an A123 graphite/LFP cell: Safari & Delacourt, "Modeling of a commercial
    # graphite/LiFePO4 cell", J. Electrochem. Soc. 158 (2011) A562, eq. A-1.
    return np.asarray(
        0.6379
        + 0.5416 * np.exp(-305.5309 * x)
        + 0.044 * np.tanh(-(x - 0.1958) / 0.1088)
        - 0.1978 * np.tanh((x - 1.0571) / 0.0854)
        - 0.6875 * np.tanh((x + 0.0117) / 0.0529)
        - 0.0175 * np.tanh((x - 0.5692) / 0.0875)
    )


def _nmc811_chen2020(y: FloatArray) -> FloatArray:
    # LG M50 NMC811 positive: Chen et al. 2020 (as above), eq. 9.
    return np.asarray(
        -0.8090 * y
        + 4.4875
        - 0.0428 * np.tanh(18.5138 * (y - 0.5542))
        - 17.7326 * np.tanh(15.7890 * (y - 0.3117))
        + 17.5842 * np.tanh(15.9308 * (y - 0.3120))
    )


def _nmc532_mohtat2020(y: FloatArray) -> FloatArray:
    # NMC532 positive of the same Mohtat et al. cell (as for its graphite).
    return np.asarray(
        4.3452
        - 1.6518 * y
        + 1.6225 * y**2
        - 2.0843 * y**3
        + 3.5146 * y**4
        - 2.2166 * y**5
        - 0.5623e-4 * np.exp(109.451 * y - 100.006)
    )


def _nca_kim2011(y: FloatArray) -> FloatArray:
    # NCA positive: Kim et al. 2011 (as for its graphite).
    return np.asarray(
        1.638 * y**10
        - 2.222 * y**9
        + 15.056 * y**8
        - 23.488 * y**7
        + 81.246 * y**6
        - 344.566 * y**5
        + 621.3475 * y**4
        - 554.774 * y**3
        + 264.427 * y**2
        - 66.3691 * y
        + 11.8058
        - 0.61386 * np.exp(5.8201 * y**136.4)
    )


def _nco_ecker2015(y: FloatArray) -> FloatArray:
    # LiNiCoO2 positive of the Kokam cell: Ecker et al. 2015 / Richardson et al. 2020 (as for
    # its graphite), with O'Kane's corrected parameter m.
    return np.asarray(
        -2.35211 * y
        - 0.0747061 * np.tanh(31.886 * (y - 0.0219921))
        + 6.34984 * np.tanh(2.66395 * (y - 0.174352))
        - 0.640243 * np.tanh(5.48623 * (y - 0.439245))
        - 3.82383 * np.tanh(4.12167 * (y - 0.176187))
        - 0.0542123 * np.tanh(18.2919 * (y - 0.762272))
        + 4.23285
    )


def _lfp_afshar2017(y: FloatArray) -> FloatArray:
    # LiFePO4: Afshar, Morris, Khajepour, "Efficient electrochemical model for lithium-ion
    # cells", arXiv:1709.03970 (2017), as Prada et al. 2013's cell carries it in PyBaMM.
    return np.asarray(
        3.4077 - 0.020269 * y + 0.5 * np.exp(-150.0 * y) - 0.9 * np.exp(-30.0 * (1.0 - y))
    )


def _lfp_safari2011(y: FloatArray) -> FloatArray:
    # LiFePO4 of the A123 cell: Safari & Delacourt 2011 (as for its graphite), eq. A-2.
    u = 1.0 - y
    return np.asarray(
        3.4323
        - 0.8428 * np.exp(-80.2493 * u**1.3198)
        - 3.2474e-6 * np.exp(20.2645 * u**3.8003)
        + 3.2482e-6 * np.exp(20.2646 * u**3.7995)
    )


LIBRARY: dict[str, HalfCell] = {
    h.name: h
    for h in (
        HalfCell("graphite_chen2020", "graphite", "negative", _graphite_chen2020),
        HalfCell("graphite_mohtat2020", "graphite", "negative", _graphite_mohtat2020),
        HalfCell("graphite_kim2011", "graphite", "negative", _graphite_kim2011),
        HalfCell("graphite_mcmb_dualfoil", "graphite", "negative", _graphite_mcmb_dualfoil),
        HalfCell("graphite_ecker2015", "graphite", "negative", _graphite_ecker2015),
        HalfCell("graphite_safari2011", "graphite", "negative", _graphite_safari2011),
        HalfCell("nmc811_chen2020", "nmc", "positive", _nmc811_chen2020),
        HalfCell("nmc532_mohtat2020", "nmc", "positive", _nmc532_mohtat2020),
        HalfCell("nca_kim2011", "nca", "positive", _nca_kim2011),
        HalfCell("nco_ecker2015", "nca", "positive", _nco_ecker2015),
        HalfCell("lfp_afshar2017", "lfp", "positive", _lfp_afshar2017),
        HalfCell("lfp_safari2011", "lfp", "positive", _lfp_safari2011),
    )
}


def curves(
    materials: tuple[str, ...], electrode: str, library: dict[str, HalfCell] | None = None
) -> list[HalfCell]:
    """The library's curves of one electrode made of any of ``materials``."""
    lib = LIBRARY if library is None else library
    return [h for h in lib.values() if h.electrode == electrode and h.material in materials]
