//! A DNS server for tests, on UDP 127.0.0.1:0: an authoritative zone the test edits while it
//! runs (A and SRV records, names missing from it answered NXDOMAIN), or told to fail every
//! query with SERVFAIL. Messages are read and written by hickory-proto, the DNS crate the
//! resolver under test is built on.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

#[derive(Default)]
struct Zone {
    a: HashMap<Name, Vec<Ipv4Addr>>,
    /// name → (port, target)
    srv: HashMap<Name, Vec<(u16, Name)>>,
    failing: bool,
}

pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: JoinHandle<()>,
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn name(n: &str) -> Name {
    let mut name = Name::from_ascii(n).expect("a DNS name");
    name.set_fqdn(true);
    name
}

impl TestDns {
    pub async fn start() -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let addr = socket.local_addr().expect("addr");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let z = zone.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let reply = answer(&z, &query);
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        TestDns { addr, zone, task }
    }

    /// `n`'s A records (none: the name is gone).
    pub fn set_a(&self, n: &str, ips: &[Ipv4Addr]) {
        let mut z = self.zone.lock().expect("zone");
        if ips.is_empty() {
            z.a.remove(&name(n));
        } else {
            z.a.insert(name(n), ips.to_vec());
        }
    }

    /// `n`'s SRV records, as (port, target) (none: the name is gone).
    pub fn set_srv(&self, n: &str, records: &[(u16, &str)]) {
        let mut z = self.zone.lock().expect("zone");
        if records.is_empty() {
            z.srv.remove(&name(n));
        } else {
            let records = records.iter().map(|(p, t)| (*p, name(t))).collect();
            z.srv.insert(name(n), records);
        }
    }

    /// Every query answered SERVFAIL while set.
    pub fn set_failing(&self, failing: bool) {
        self.zone.lock().expect("zone").failing = failing;
    }
}

fn answer(zone: &Mutex<Zone>, query: &Message) -> Message {
    let z = zone.lock().expect("zone");
    let mut reply = Message::new(
        query.metadata.id,
        MessageType::Response,
        query.metadata.op_code,
    );
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.add_queries(query.queries.iter().cloned());
    if z.failing {
        reply.metadata.response_code = ResponseCode::ServFail;
        return reply;
    }
    let Some(q) = query.queries.first() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return reply;
    };
    let a_records = |n: &Name| -> Vec<Record> {
        z.a.get(n)
            .into_iter()
            .flatten()
            .map(|ip| Record::from_rdata(n.clone(), 1, RData::A(A(*ip))))
            .collect()
    };
    let known = z.a.contains_key(&q.name) || z.srv.contains_key(&q.name);
    match q.query_type {
        RecordType::A => {
            reply.add_answers(a_records(&q.name));
        }
        RecordType::SRV => {
            for (port, target) in z.srv.get(&q.name).into_iter().flatten() {
                reply.add_answer(Record::from_rdata(
                    q.name.clone(),
                    1,
                    RData::SRV(SRV::new(0, 10, *port, target.clone())),
                ));
                reply.add_additionals(a_records(target));
            }
        }
        _ => {}
    }
    if !known {
        reply.metadata.response_code = ResponseCode::NXDomain;
    }
    reply
}
