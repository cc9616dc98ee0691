//! The six CNI commands. ADD and DEL change the instance's plan by one attachment and
//! converge it ([`instance::converge`], scoped to that container) under the instance's
//! lock; CHECK compares what exists with the plan; GC removes the attachments the
//! runtime no longer knows; STATUS says whether an ADD could be served.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{Value, json};

use super::conf::{NetConf, container_name, version_of};
use super::ipam::{self, Lease};
use super::{CniError, Env, SUPPORTED_VERSIONS, code, result};
use crate::config::{Attachment, Config, ConfigError, Driver, NetworkConfig, Plan};
use crate::dataplane;
use crate::instance::{self, Scope};
use crate::lock::InstanceLock;
use crate::netns;
use crate::state::State;
use crate::topology;

pub fn dispatch(env: &Env, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    match env.command.as_str() {
        "VERSION" => Ok(Some(json!({
            "cniVersion": version_of(stdin).unwrap_or_else(|| "1.1.0".to_owned()),
            "supportedVersions": SUPPORTED_VERSIONS,
        }))),
        "ADD" => add(env, stdin).map(Some),
        "DEL" => del(env, stdin).map(|()| None),
        "CHECK" => check(env, stdin).map(|()| None),
        "GC" => gc(env, stdin).map(|()| None),
        "STATUS" => status(env, stdin).map(|()| None),
        "" => Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set")),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_COMMAND = {other:?}: not one of ADD, DEL, CHECK, GC, STATUS, VERSION"),
        )),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn host_err(what: impl std::fmt::Display) -> impl FnOnce(topology::TopologyError) -> CniError {
    move |e| CniError::new(code::HOST, format!("{what}: {e}"))
}

fn add(env: &Env, stdin: &[u8]) -> Result<Value, CniError> {
    let conf = NetConf::parse(stdin)?;
    let (id, ifname, ns) = (env.container_id()?, env.ifname()?, env.netns()?);
    let instance = conf.instance()?;
    let publish = conf.publish_specs()?;
    let ipam_type = conf.ipam_type()?;
    if !netns::exists(ns) {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("CNI_NETNS = {ns:?}: no such network namespace"),
        ));
    }
    let inside = runtime()
        .block_on(topology::inside(ns, ifname))
        .map_err(host_err(format!("netns {ns}")))?;
    if inside.link.is_some() {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_IFNAME = {ifname:?}: an interface of that name already exists in {ns}"),
        ));
    }
    // The lease first, outside the instance's lock (the IPAM plugin has its own); a
    // failure after it gives the lease back, so a failed ADD leaks nothing.
    let leased = ipam::exec(env, ipam_type, "ADD", stdin)?;
    let attached = ipam::lease(&leased, ipam_type).and_then(|lease| {
        attach(
            &conf,
            &instance,
            Attachment {
                container_id: id.to_owned(),
                ifname: ifname.to_owned(),
                netns: ns.to_owned(),
            },
            publish,
            &lease,
        )
    });
    match attached {
        Ok((result, dead)) => {
            release(env, &conf, stdin, &dead);
            Ok(result)
        }
        Err(e) => {
            if let Err(d) = ipam::exec(env, ipam_type, "DEL", stdin) {
                eprintln!("netplane-cni: ADD failed, and so did giving the lease back: {d}");
            }
            Err(e)
        }
    }
}

/// The network of `conf` as the instance's plan has it, with the subnets and gateways of
/// the lease (an IPv6-only lease makes an IPv6-only network): created on the first ADD,
/// checked on the next ones.
fn network_of(conf: &NetConf, config: &mut Config, lease: &Lease) -> Result<(), CniError> {
    let bridge = conf.bridge();
    let subnet = lease.address.map(|a| a.trunc());
    let gateway = match subnet {
        None => None,
        Some(s) => Some(lease.gateway.or_else(|| s.hosts().next()).ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("ipam: subnet {s} has no host addresses"),
            )
        })?),
    };
    // The IPv6 subnet and gateway (host-local's default: ::1).
    let subnet6 = lease.address6.map(|a| a.trunc());
    let gateway6 = subnet6.map(|s6| {
        lease
            .gateway6
            .unwrap_or_else(|| std::net::Ipv6Addr::from(u128::from(s6.network()) + 1))
    });
    let want = NetworkConfig {
        name: bridge.to_owned(),
        subnet: subnet.map(|s| s.to_string()),
        gateway: gateway.map(|g| g.to_string()),
        subnet6: subnet6.map(|s| s.to_string()),
        gateway6: gateway6.map(|g| g.to_string()),
        driver: Driver::Bridge,
        gateway_mode: conf.gateway_mode(),
        mtu: conf.mtu(),
    };
    if let Some(other) = config.networks.iter().find(|n| n.name != bridge) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "bridge = {bridge:?}: network {} has its containers on bridge {:?}; remove \
                 them (or `netplane down --name cni-{}`) before changing it",
                conf.name, other.name, conf.name
            ),
        ));
    }
    let addressing = |n: &NetworkConfig| {
        (
            n.subnet.clone(),
            n.gateway.clone(),
            n.subnet6.clone(),
            n.gateway6.clone(),
        )
    };
    let describe = |n: &NetworkConfig| {
        [(&n.subnet, &n.gateway), (&n.subnet6, &n.gateway6)]
            .into_iter()
            .filter_map(|(s, g)| {
                Some(format!(
                    "{} (gateway {})",
                    s.as_ref()?,
                    g.as_deref().unwrap_or("none")
                ))
            })
            .collect::<Vec<_>>()
            .join(" and ")
    };
    match config.networks.first_mut() {
        Some(n) => {
            if addressing(n) != addressing(&want) {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!(
                        "ipam: gave {}, but network {} is {} for the containers attached \
                         already",
                        describe(&want),
                        conf.name,
                        describe(n)
                    ),
                ));
            }
            n.gateway_mode = want.gateway_mode;
            n.mtu = want.mtu;
        }
        None => config.networks.push(want),
    }
    Ok(())
}

/// A planning error, with its field named as the runtime's config names it: the added
/// container's `publish[i]` is `runtimeConfig.portMappings[i]`, `routes[i]` is
/// `hostRoutes[i]`, the network's keys are the conf's own.
fn in_cni_terms(e: ConfigError, config: &Config, new: Option<&str>) -> CniError {
    let ConfigError::Invalid {
        field,
        value,
        reason,
    } = e
    else {
        return e.into();
    };
    let added = new
        .and_then(|n| config.containers.iter().position(|c| c.name == n))
        .map(|i| format!("containers[{i}].publish["));
    let field = match &added {
        Some(p) if field.starts_with(p.as_str()) => {
            field.replacen(p.as_str(), "runtimeConfig.portMappings[", 1)
        }
        _ if field.starts_with("routes[") => field.replacen("routes[", "hostRoutes[", 1),
        _ if field.starts_with("networks[0].") => field.replacen("networks[0].", "", 1),
        _ => field,
    };
    ConfigError::Invalid {
        field,
        value,
        reason,
    }
    .into()
}

/// Plans `config` and gives every container its attachment back: the one being added
/// (`new`), the others as `old` recorded them.
fn plan_with_attachments(
    config: &Config,
    old: Option<&Plan>,
    new: Option<(&str, &Attachment)>,
) -> Result<Plan, CniError> {
    let mut plan = config
        .plan()
        .map_err(|e| in_cni_terms(e, config, new.map(|(n, _)| n)))?;
    for c in &mut plan.containers {
        let attachment = match new {
            Some((name, a)) if c.name == name => Some(a.clone()),
            _ => old
                .and_then(|p| p.container(&c.name))
                .and_then(|o| o.attachment.clone()),
        };
        if let Some(a) = attachment {
            c.netns = a.netns.clone();
            c.attachment = Some(a);
        }
    }
    Ok(plan)
}

fn attach(
    conf: &NetConf,
    instance: &str,
    attachment: Attachment,
    publish: Vec<String>,
    lease: &Lease,
) -> Result<(Value, Vec<Attachment>), CniError> {
    let lock = InstanceLock::acquire(instance, "cni ADD").map_err(instance::Error::from)?;
    let old = State::load(instance)
        .map_err(instance::Error::from)?
        .and_then(|s| s.plan);
    let dead = old.as_ref().map(dead).unwrap_or_default();
    let mut config = old.as_ref().map_or_else(
        || Config {
            name: instance.to_owned(),
            mode: conf.mode(),
            uplink: None,
            networks: Vec::new(),
            containers: Vec::new(),
            routes: Vec::new(),
            conntrack: Default::default(),
            ebpf: Default::default(),
            metrics: Default::default(),
        },
        Plan::to_config,
    );
    config.mode = conf.mode();
    config.uplink = conf.uplink.clone();
    config.routes = conf.host_routes.clone();
    if let Some(ct) = conf.conntrack {
        config.conntrack = ct;
    }
    if let Some(metrics) = &conf.metrics {
        config.metrics = metrics.clone();
    }
    network_of(conf, &mut config, lease)?;
    if !publish.is_empty() && !conf.gateway_mode().nat() {
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            format!(
                "runtimeConfig.portMappings: network {} is {} (isGateway/ipMasq/gatewayMode), \
                 where host ports are not translated; port mappings need ipMasq = true",
                conf.name,
                conf.gateway_mode()
            ),
        ));
    }
    let name = container_name(&attachment.container_id, &attachment.ifname);
    if let Some(other) = old
        .as_ref()
        .and_then(|p| p.container(&name))
        .and_then(|c| c.attachment.as_ref())
        .filter(|a| (&a.container_id, &a.ifname) != (&attachment.container_id, &attachment.ifname))
    {
        return Err(CniError::new(
            code::HOST,
            format!(
                "CNI_CONTAINERID = {:?}: its name in the network, {name}, is taken by container \
                 {} ({}); use another ID",
                attachment.container_id, other.container_id, other.ifname
            ),
        ));
    }
    // The same attachment again (its interface is gone: checked by the caller), and the
    // attachments whose veth is gone: what the plan has of them is stale.
    config
        .containers
        .retain(|c| c.name != name && !dead.contains(&c.name));
    config.containers.push(crate::config::ContainerConfig {
        name: name.clone(),
        network: conf.bridge().to_owned(),
        ip: lease.address.map(|a| a.addr().to_string()),
        ip6: lease.address6.map(|a| a.addr().to_string()),
        publish,
    });
    let plan = plan_with_attachments(&config, old.as_ref(), Some((&name, &attachment)))?;
    match instance::converge(&lock, &plan, &Scope::Only([name.clone()].into())) {
        Ok(_) => {}
        // Done, and saved; only removing what left the plan failed: said, not fatal.
        Err(instance::Error::Teardown(failures)) => {
            eprintln!("netplane-cni: ADD: {}", failures.join("; "));
        }
        Err(e) => return Err(e.into()),
    }
    let c = plan.container(&name).expect("planned");
    let net = plan.network(&c.network).expect("planned");
    let finished = extra_routes(c, lease).and_then(|routes| {
        // The two links the result names, looked up by name: a dump of every link costs
        // milliseconds with hundreds of containers attached.
        let links = runtime()
            .block_on(async {
                let h = topology::connect(None)?;
                let mut links = Vec::new();
                for name in [&net.name, &c.host_veth] {
                    links.extend(topology::link(&h, name).await?);
                }
                Ok::<_, topology::TopologyError>(links)
            })
            .map_err(host_err("look up the bridge and the host veth"))?;
        Ok(result::build(
            &conf.cni_version,
            net,
            c,
            &links,
            &routes,
            lease.dns.as_ref(),
        ))
    });
    match finished {
        Ok(result) => Ok((result, gone_of(old.as_ref(), &dead))),
        Err(e) => {
            // Undo the attachment: the runtime sees a failed ADD and nothing of it stays.
            if let Err(undo) = detach_locked(&lock, &plan, &[name].into()) {
                eprintln!("netplane-cni: ADD failed, and so did undoing it: {undo}");
            }
            Err(e)
        }
    }
}

/// The attachments of `plan` whose host veth is gone: the pair went with the container's
/// namespace (the container died and no DEL came, or a DEL could not finish). ADD, DEL
/// and GC remove them, lease included, so that nothing of them lingers in the maps.
///
/// One `if_nametoindex` each (an ioctl in this thread's namespace, the host's): cheaper,
/// at hundreds of attachments, than one dump of every link.
fn dead(plan: &Plan) -> BTreeSet<String> {
    plan.containers
        .iter()
        .filter(|c| {
            c.attachment.is_some()
                && nix::net::if_::if_nametoindex(c.host_veth.as_str()) == Err(nix::Error::ENODEV)
        })
        .map(|c| c.name.clone())
        .collect()
}

/// The attachments of the containers `names` of `plan`.
fn gone_of(plan: Option<&Plan>, names: &BTreeSet<String>) -> Vec<Attachment> {
    plan.into_iter()
        .flat_map(|p| &p.containers)
        .filter(|c| names.contains(&c.name))
        .filter_map(|c| c.attachment.clone())
        .collect()
}

/// Gives the leases of `gone` back to the IPAM plugin, as a DEL of each would.
fn release(env: &Env, conf: &NetConf, stdin: &[u8], gone: &[Attachment]) {
    let Ok(ty) = conf.ipam_type() else { return };
    for a in gone {
        let env = Env {
            container_id: Some(a.container_id.clone()),
            ifname: Some(a.ifname.clone()),
            netns: None,
            ..env.clone()
        };
        if let Err(e) = ipam::exec(&env, ty, "DEL", stdin) {
            eprintln!(
                "netplane-cni: releasing the lease of {}/{}: {e}",
                a.container_id, a.ifname
            );
        }
    }
}

/// The routes of the IPAM result other than the default one (which the plan gives every
/// container of a network with a gateway, unless another interface of the namespace has
/// it), inside the container. Returns the routes through the container's interface, for
/// the result.
fn extra_routes(c: &crate::config::Container, lease: &Lease) -> Result<Vec<Value>, CniError> {
    // IPv4 ones, for a container that has IPv4.
    let routes: Vec<(Ipv4Net, Option<Ipv4Addr>)> = lease
        .routes
        .iter()
        .filter(|_| c.ip.is_some())
        .filter_map(|r| {
            let dst: Ipv4Net = r.get("dst")?.as_str()?.parse().ok()?;
            let gw = r.get("gw").and_then(|g| g.as_str()?.parse().ok());
            (dst.prefix_len() > 0).then_some((dst, gw.or(c.gateway)))
        })
        .collect();
    let rt = runtime();
    let inside = rt
        .block_on(topology::inside(&c.netns, c.ifname()))
        .map_err(host_err(format!("netns {}", c.netns)))?;
    let oif = inside.link.map(|l| l.index).ok_or_else(|| {
        CniError::new(code::HOST, format!("{}: {} vanished", c.netns, c.ifname()))
    })?;
    let mut installed: Vec<Value> = inside
        .routes
        .iter()
        .filter(|r| r.prefix_len == 0 && r.oif == Some(oif))
        .map(|r| json!({"dst": "0.0.0.0/0", "gw": r.gateway.map(|g| g.to_string())}))
        .collect();
    for (dst, gw) in routes {
        rt.block_on(topology::ensure_container_route(&c.netns, oif, dst, gw))
            .map_err(host_err(format!("route {dst} in {}", c.netns)))?;
        installed.push(json!({"dst": dst.to_string(), "gw": gw.map(|g| g.to_string())}));
    }
    if c.ip6.is_some()
        && let Some(gw6) = rt
            .block_on(topology::default_route6_via(&c.netns, oif))
            .map_err(host_err(format!("IPv6 routes of {}", c.netns)))?
    {
        installed.push(json!({"dst": "::/0", "gw": gw6.to_string()}));
    }
    Ok(installed)
}

/// Removes the containers `names` from the plan `old` and converges: their host veths,
/// map entries (or DNAT rules), conntrack entries and stale UDP conntrack go; the
/// runtime's namespaces are not touched. When the host refuses (no uplink, a netlink
/// error), their veths still go and the plan keeps them: any later ADD, DEL or GC finds
/// them dead (see [`dead`]) and finishes the job.
fn detach_locked(
    lock: &InstanceLock,
    old: &Plan,
    names: &BTreeSet<String>,
) -> Result<(), CniError> {
    let mut config = old.to_config();
    config.containers.retain(|c| !names.contains(&c.name));
    let plan = plan_with_attachments(&config, Some(old), None)?;
    match instance::converge(lock, &plan, &Scope::Only(BTreeSet::new())) {
        Ok(_) => Ok(()),
        // Saved without them; only some removal failed, and was said.
        Err(instance::Error::Teardown(failures)) => {
            eprintln!("netplane-cni: {}", failures.join("; "));
            Ok(())
        }
        Err(e) => {
            let rt = runtime();
            for c in old.containers.iter().filter(|c| names.contains(&c.name)) {
                let _ = rt.block_on(async {
                    let h = topology::connect(None)?;
                    topology::delete_link(&h, &c.host_veth).await
                });
            }
            Err(CniError::new(
                code::TRY_AGAIN,
                format!("the data plane could not be updated; try again: {e}").replace('\n', "; "),
            ))
        }
    }
}

/// Detaches the attachments that `pick` names, and every dead one (see [`dead`]), from
/// `instance`, if it exists. Returns the attachments that went.
fn detach(
    instance: &str,
    pick: impl Fn(&Plan) -> BTreeSet<String>,
) -> Result<Vec<Attachment>, CniError> {
    if !State::exists(instance) {
        return Ok(Vec::new());
    }
    let lock = InstanceLock::acquire(instance, "cni DEL").map_err(instance::Error::from)?;
    let Some(old) = State::load(instance)
        .map_err(instance::Error::from)?
        .and_then(|s| s.plan)
    else {
        // The first ADD of the network did not finish (it was killed before its
        // rollback): its journal lists what it may have made, and that all goes.
        instance::down_locked(&lock, None)?;
        return Ok(Vec::new());
    };
    let mut names = pick(&old);
    names.extend(dead(&old));
    if names.is_empty() {
        return Ok(Vec::new());
    }
    detach_locked(&lock, &old, &names)?;
    Ok(gone_of(Some(&old), &names))
}

/// DEL: the attachment's veth, ports, map entries and conntrack entries go, and its
/// lease. It succeeds with the namespace gone, with `CNI_NETNS` empty (`ctr run --rm`),
/// without `prevResult`, repeated, and for a network that is not up. Only a host that
/// refuses the change makes it fail (code 11, try again), and then the lease is kept, so
/// that the address is not handed out while a map entry may still lead to it.
fn del(env: &Env, stdin: &[u8]) -> Result<(), CniError> {
    let conf = NetConf::parse(stdin)?;
    let (id, ifname) = (env.container_id()?, env.ifname()?);
    let name = container_name(id, ifname);
    // A name netplane refuses was never an instance: nothing of it to remove.
    if let Ok(instance) = conf.instance() {
        let gone = detach(&instance, |_| [name.clone()].into())?;
        let others: Vec<Attachment> = gone
            .into_iter()
            .filter(|a| (a.container_id.as_str(), a.ifname.as_str()) != (id, ifname))
            .collect();
        release(env, &conf, stdin, &others);
    }
    // The attachment is gone whatever the IPAM config says; the lease needs it.
    ipam::exec(env, conf.ipam_type()?, "DEL", stdin).map(drop)
}

/// CNI 1.1's GC: every attachment of the network that is not in
/// `cni.dev/valid-attachments` goes, as with DEL, lease included; an IPAM plugin that
/// speaks 1.1 gets the GC too (for leases netplane never recorded: an ADD killed
/// half-way).
fn gc(env: &Env, stdin: &[u8]) -> Result<(), CniError> {
    let conf = NetConf::parse(stdin)?;
    let instance = conf.instance()?;
    let valid = conf.valid_attachments.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "cni.dev/valid-attachments: missing; GC removes what is not in it, so it must be given",
        )
    })?;
    let gone = detach(&instance, |plan| {
        plan.containers
            .iter()
            .filter(|c| {
                c.attachment.as_ref().is_some_and(|a| {
                    !valid
                        .iter()
                        .any(|v| v.container_id == a.container_id && v.ifname == a.ifname)
                })
            })
            .map(|c| c.name.clone())
            .collect()
    })?;
    release(env, &conf, stdin, &gone);
    let ty = conf.ipam_type()?;
    if ipam::speaks_1_1(env, ty) {
        ipam::exec(env, ty, "GC", stdin)?;
    }
    Ok(())
}

/// CHECK: the interface, its address and routes, the host veth on the bridge, the port
/// mappings against the runtime's and against the data plane; then the IPAM plugin's own.
fn check(env: &Env, stdin: &[u8]) -> Result<(), CniError> {
    let conf = NetConf::parse(stdin)?;
    let (id, ifname, ns) = (env.container_id()?, env.ifname()?, env.netns()?);
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "prevResult: missing; CHECK compares against the ADD's result",
        )
    })?;
    let instance = conf.instance()?;
    let unknown = || {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!(
                "container {id} ({ifname}) is not attached to network {}",
                conf.name
            ),
        )
    };
    let plan = State::load(&instance)
        .map_err(instance::Error::from)?
        .and_then(|s| s.plan)
        .ok_or_else(unknown)?;
    let c = plan
        .container(&container_name(id, ifname))
        .ok_or_else(unknown)?;
    let net = plan
        .network(&c.network)
        .expect("a planned container's network");
    let mut problems = Vec::new();
    let rt = runtime();
    let inside = rt
        .block_on(topology::inside(ns, ifname))
        .map_err(host_err(format!("netns {ns}")))?;
    let want = c.net4();
    let want6 = c
        .ip6
        .zip(net.subnet6)
        .map(|(ip6, s6)| ipnet::Ipv6Net::new(ip6, s6.prefix_len()).expect("planned"));
    // The default route is the container's when the ADD's result said so (another
    // interface of the namespace may hold it).
    let lists_default = prev
        .get("routes")
        .and_then(Value::as_array)
        .is_some_and(|rs| rs.iter().any(|r| r["dst"] == "0.0.0.0/0"));
    match &inside.link {
        None => problems.push(format!("{ifname} is missing in {ns}")),
        Some(l) => {
            if !l.up {
                problems.push(format!("{ifname} is down"));
            }
            if l.mac != Some(c.mac) {
                problems.push(format!(
                    "{ifname} has another MAC than {}",
                    crate::config::format_mac(c.mac)
                ));
            }
            if let Some(want) = want
                && !inside.addrs.contains(&want)
            {
                problems.push(format!("{ifname} lacks address {want}"));
            }
            if let Some(want6) = want6
                && !inside.addrs6.contains(&want6)
            {
                problems.push(format!("{ifname} lacks address {want6}"));
            }
            if lists_default
                && let Some(gw) = c.gateway
                && !inside
                    .routes
                    .iter()
                    .any(|r| r.prefix_len == 0 && r.gateway == Some(gw) && r.oif == Some(l.index))
            {
                problems.push(format!("the default route via {gw} on {ifname} is missing"));
            }
        }
    }
    for r in prev
        .get("routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(dst) = r
            .get("dst")
            .and_then(Value::as_str)
            .and_then(|d| d.parse::<Ipv4Net>().ok())
        else {
            continue;
        };
        if !inside.routes.iter().any(|m| m.dst == dst) {
            problems.push(format!("route {dst} of the result is missing"));
        }
    }
    let planned = want
        .map(ipnet::IpNet::V4)
        .into_iter()
        .chain(want6.map(ipnet::IpNet::V6));
    for want in planned {
        let prev_has_ip = prev
            .get("ips")
            .and_then(Value::as_array)
            .is_some_and(|ips| {
                ips.iter()
                    .any(|i| i.get("address").and_then(Value::as_str) == Some(&want.to_string()))
            });
        if !prev_has_ip {
            problems.push(format!("prevResult does not hold {want}"));
        }
    }
    let (links, ..) = topology::host_now(false).map_err(host_err("list the host's links"))?;
    let bridge = links.iter().find(|l| l.name == net.name);
    match (links.iter().find(|l| l.name == c.host_veth), bridge) {
        (None, _) => problems.push(format!("host veth {} is missing", c.host_veth)),
        (_, None) => problems.push(format!("bridge {} is missing", net.name)),
        (Some(v), Some(b)) => {
            if v.master != Some(b.index) {
                problems.push(format!(
                    "host veth {} is not on bridge {}",
                    c.host_veth, net.name
                ));
            }
            if !v.up {
                problems.push(format!("host veth {} is down", c.host_veth));
            }
        }
    }
    let specs: BTreeSet<String> = conf.publish_specs()?.into_iter().collect();
    let have: BTreeSet<String> = c.publish.iter().map(|p| p.spec.clone()).collect();
    if specs != have {
        problems.push(format!(
            "port mappings: the runtime asks for [{}], the attachment has [{}]",
            specs.into_iter().collect::<Vec<_>>().join(", "),
            have.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    problems.extend(dataplane::for_mode(plan.mode).verify_ports(&plan, c));
    if !problems.is_empty() {
        return Err(CniError::new(
            code::HOST,
            format!(
                "CHECK of {id} ({ifname}) on {}: {}",
                conf.name,
                problems.join("; ")
            ),
        ));
    }
    if let Ok(ty) = conf.ipam_type() {
        ipam::exec(env, ty, "CHECK", stdin)?;
    }
    Ok(())
}

/// CNI 1.1's STATUS: 0 when an ADD could be served (root, the data plane's kernel
/// features and tools, the IPAM plugin on `CNI_PATH`), else code 50 with the reason.
fn status(env: &Env, stdin: &[u8]) -> Result<(), CniError> {
    let conf = NetConf::parse(stdin)?;
    let unavailable = |what: String| CniError::new(code::NOT_AVAILABLE, what);
    instance::require_root().map_err(|e| unavailable(e.to_string()))?;
    dataplane::for_mode(conf.mode())
        .check()
        .map_err(|e| unavailable(e.to_string()))?;
    let ty = conf.ipam_type()?;
    ipam::find(env, ty).map_err(|e| unavailable(e.msg))?;
    // The uplink ADD would masquerade to, as `up` finds it.
    instance::uplink_of(conf.uplink.as_deref()).map_err(|e| unavailable(e.to_string()))?;
    if ipam::speaks_1_1(env, ty) {
        ipam::exec(env, ty, "STATUS", stdin).map_err(|e| unavailable(e.msg))?;
    }
    Ok(())
}
