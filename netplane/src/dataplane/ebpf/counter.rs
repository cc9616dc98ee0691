//! The packet counter: `netplane_count_{ingress,egress}` on one interface, read from the
//! per-CPU `NETPLANE_COUNTERS` map.

use aya::Ebpf;
use aya::maps::PerCpuArray;
use aya::programs::tc::SchedClassifierLinkId;
use aya::programs::{SchedClassifier, TcAttachType, TestRun, TestRunOptions};
use netplane_common::counters::{COUNTERS_MAP, Counters, Direction};

use super::conntrack::CtCapacity;
use super::object::{self, EbpfError, LoadOptions};

const fn program_name(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => "netplane_count_ingress",
        Direction::Egress => "netplane_count_egress",
    }
}

const fn hook(dir: Direction) -> (TcAttachType, &'static str) {
    match dir {
        Direction::Ingress => (TcAttachType::Ingress, "tc ingress"),
        Direction::Egress => (TcAttachType::Egress, "tc egress"),
    }
}

/// Totals over all CPUs, per direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub ingress: Counters,
    pub egress: Counters,
}

/// Both counter programs, loaded; attached to at most one interface at a time.
///
/// Dropping it detaches the programs (the TCX links belong to the `Ebpf` object).
pub struct PacketCounter {
    bpf: Ebpf,
    attached: Option<(String, Vec<(Direction, SchedClassifierLinkId)>)>,
}

impl PacketCounter {
    /// Loads both programs into the kernel without attaching them.
    ///
    /// # Errors
    /// [`EbpfError::Load`] carries the verifier log when the kernel rejects a program.
    pub fn load() -> Result<Self, EbpfError> {
        // The object's maps are created with it, the preallocated conntrack tables too,
        // which the counter never uses: the smallest they can be.
        let mut bpf = object::load(&LoadOptions {
            conntrack: Some(CtCapacity { v4: 1, v6: None }),
            ..LoadOptions::default()
        })?;
        for dir in Direction::ALL {
            program(&mut bpf, dir)?
                .load()
                .map_err(EbpfError::load(program_name(dir)))?;
        }
        Ok(Self {
            bpf,
            attached: None,
        })
    }

    /// Attaches both programs to `iface`, as TCX links on kernels ≥ 6.6.
    /// If the second attach fails, the first is detached again.
    pub fn attach(&mut self, iface: &str) -> Result<(), EbpfError> {
        self.detach()?;
        let mut links = Vec::new();
        for dir in Direction::ALL {
            let (kind, hook) = hook(dir);
            match program(&mut self.bpf, dir)?.attach(iface, kind) {
                Ok(id) => links.push((dir, id)),
                Err(source) => {
                    self.attached = Some((iface.to_owned(), links));
                    let _ = self.detach();
                    return Err(EbpfError::Attach {
                        program: program_name(dir).to_owned(),
                        device: iface.to_owned(),
                        hook,
                        source: source.into(),
                    });
                }
            }
        }
        self.attached = Some((iface.to_owned(), links));
        Ok(())
    }

    /// Detaches from the interface, if attached. Detaches every link before reporting the
    /// first failure.
    pub fn detach(&mut self) -> Result<(), EbpfError> {
        let Some((iface, links)) = self.attached.take() else {
            return Ok(());
        };
        let mut first_err = None;
        for (dir, id) in links {
            if let Err(source) = program(&mut self.bpf, dir)?.detach(id) {
                first_err.get_or_insert(EbpfError::Detach {
                    program: program_name(dir).to_owned(),
                    device: iface.clone(),
                    source: source.into(),
                });
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The counters summed over all CPUs.
    pub fn read(&self) -> Result<Totals, EbpfError> {
        let map_err = EbpfError::map(COUNTERS_MAP);
        let map: PerCpuArray<_, Counters> = PerCpuArray::try_from(
            self.bpf
                .map(COUNTERS_MAP)
                .ok_or(EbpfError::MissingMap(COUNTERS_MAP))?,
        )
        .map_err(map_err)?;
        let total = |dir: Direction| -> Result<Counters, EbpfError> {
            Ok(Counters::sum(
                map.get(&dir.index(), 0).map_err(map_err)?.iter(),
            ))
        };
        Ok(Totals {
            ingress: total(Direction::Ingress)?,
            egress: total(Direction::Egress)?,
        })
    }

    /// Runs the `dir` program once on `packet` (an Ethernet frame) with
    /// `BPF_PROG_TEST_RUN`, and returns its TC verdict.
    pub fn test_run(&mut self, dir: Direction, packet: &[u8]) -> Result<i32, EbpfError> {
        let opts = TestRunOptions {
            data_in: Some(packet),
            ..TestRunOptions::new()
        };
        let res = program(&mut self.bpf, dir)?
            .test_run(opts)
            .map_err(|source| EbpfError::TestRun {
                program: program_name(dir).to_owned(),
                source: source.into(),
            })?;
        Ok(res.return_value as i32)
    }
}

fn program(bpf: &mut Ebpf, dir: Direction) -> Result<&mut SchedClassifier, EbpfError> {
    object::program(bpf, program_name(dir))
}
