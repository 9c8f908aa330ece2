//! The devlink eswitch mode of a device (legacy or switchdev), asked over
//! generic netlink with neli. Switchdev mode is what lets a NIC take
//! flower rules between its ports; legacy NICs offload far less.

use neli::attr::Attribute;
use neli::consts::nl::NlmF;
use neli::consts::socket::NlFamily;
use neli::genl::{AttrTypeBuilder, Genlmsghdr, GenlmsghdrBuilder, NlattrBuilder};
use neli::nl::NlPayload;
use neli::router::synchronous::NlRouter;
use neli::types::GenlBuffer;
use neli::utils::Groups;

const DEVLINK_CMD_ESWITCH_GET: u8 = 29;
const DEVLINK_ATTR_BUS_NAME: u16 = 1;
const DEVLINK_ATTR_DEV_NAME: u16 = 2;
const DEVLINK_ATTR_ESWITCH_MODE: u16 = 25;
const DEVLINK_GENL_VERSION: u8 = 1;

/// The eswitch mode of the devlink instance `bus/device`.
pub fn eswitch_mode(handle: &str) -> Result<String, String> {
    let (bus, dev) = handle.split_once('/').ok_or_else(|| format!("bad devlink handle '{handle}'"))?;
    let (router, _) = NlRouter::connect(NlFamily::Generic, None, Groups::empty()).map_err(|e| e.to_string())?;
    let family = router.resolve_genl_family("devlink").map_err(|e| e.to_string())?;
    let attr = |kind: u16, value: &str| {
        NlattrBuilder::default()
            .nla_type(AttrTypeBuilder::default().nla_type(kind).build().map_err(|e| e.to_string())?)
            .nla_payload(value)
            .build()
            .map_err(|e| e.to_string())
    };
    let attrs: GenlBuffer<u16, _> =
        [attr(DEVLINK_ATTR_BUS_NAME, bus)?, attr(DEVLINK_ATTR_DEV_NAME, dev)?].into_iter().collect();
    let msg = GenlmsghdrBuilder::default()
        .cmd(DEVLINK_CMD_ESWITCH_GET)
        .version(DEVLINK_GENL_VERSION)
        .attrs(attrs)
        .build()
        .map_err(|e| e.to_string())?;
    let recv = router
        .send::<_, _, u16, Genlmsghdr<u8, u16>>(family, NlmF::ACK, NlPayload::Payload(msg))
        .map_err(|e| e.to_string())?;
    for reply in recv {
        let reply = reply.map_err(|e| e.to_string())?;
        if let Some(p) = reply.get_payload() {
            for a in p.attrs().iter() {
                if *a.nla_type().nla_type() == DEVLINK_ATTR_ESWITCH_MODE {
                    let mode: u16 = a.get_payload_as().map_err(|e| e.to_string())?;
                    return Ok(match mode {
                        0 => "legacy".into(),
                        1 => "switchdev".into(),
                        m => format!("mode {m}"),
                    });
                }
            }
        }
    }
    Err(format!("{handle}: no eswitch mode in devlink's reply"))
}
