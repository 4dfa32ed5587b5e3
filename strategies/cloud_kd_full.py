"""cloud-kd-full: the cost upper bound of CD-CCA. Every raw image is uploaded, the downlink is dense fp32,
and the cloud distils exactly as ``cdcca`` does.

Device half: ``clients/cdcca_device.py`` (with UTS off and image uploads, DWC without selection or
quantisation: ``effective_config`` says so in the run's saved config).
"""

from strategies.cdcca import CDCCA


class CloudKDFull(CDCCA):
    name = "cloud-kd-full"

    @classmethod
    def effective_config(cls, cfg):
        s = cfg.strategy
        return cfg.model_copy(update={"strategy": s.model_copy(update={
            "uts": s.uts.model_copy(update={"method": "off", "tokens": "off", "upload": "images"}),
            "dwc": s.dwc.model_copy(update={"select": False, "quantize": False})})})
