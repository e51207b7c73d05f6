//! The framework's own ceiling: a bare pingora-proxy `ProxyHttp` that sends every
//! request to one fixed upstream, with default settings and jemalloc. Weir's
//! comparisons measure against this binary in the same run.
//!
//! `pingora-baseline --listen 127.0.0.1:8081 --upstream 127.0.0.1:9001 --threads 1`

use async_trait::async_trait;
use clap::Parser;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: String,
    #[arg(long, default_value = "127.0.0.1:9001")]
    upstream: std::net::SocketAddr,
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

struct Fixed(std::net::SocketAddr);

#[async_trait]
impl ProxyHttp for Fixed {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }
}

fn main() {
    let args = Args::parse();
    let conf = ServerConf {
        threads: args.threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = pingora::proxy::http_proxy_service(&server.configuration, Fixed(args.upstream));
    svc.add_tcp(&args.listen);
    server.add_service(svc);
    server.run_forever();
}
