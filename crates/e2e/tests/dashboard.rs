//! The dashboard in a real headless Chromium (Debian's `chromium` + `chromedriver`, driven over
//! WebDriver): an administrator logs in, sees the fleet, opens the host — a real Debian kernel
//! in QEMU whose agent talks to the server — promotes a level with confirmation, and watches the
//! host's exposure fall once the agent has applied it; a viewer cannot promote. And the banner
//! every page shows when the CVE data is older than `cve.max_age_days`, photographed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use patchbay_e2e::{
    assert_checks, bundle, fixture, server_binary, store_cve_data_before, Guest, ServerProcess,
};
use patchbay_kernels::{fetch_selector, KernelSelector};
use patchbay_vm::Network;

const GUEST_PORT: u16 = 8080;
/// Labels the demo level with a CVE that affects every 6.1.y release of the bundled data
/// (no 6.1.y fix), so its exposure must fall by one when the level is live. The demo patch
/// does not really fix it; the manifest's `fixes` is what the server counts.
const FIXED_LABEL: &str = "CVE-2024-26953";

struct ChromeDriver(Child, u16);

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromedriver() -> ChromeDriver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = ChromeDriver(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install chromium-driver; scripts/setup does)"),
        port,
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return driver;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("chromedriver did not listen on {port}");
}

async fn browser(driver: &ChromeDriver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]}),
    );
    // The server's certificate is the self-signed one `init` made; this test is about the
    // dashboard (the clients' pinning has its own tests: tests/registration.rs, the agent's).
    caps.insert("acceptInsecureCerts".into(), serde_json::Value::Bool(true));
    ClientBuilder::rustls()
        .unwrap()
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await
        .expect("connect to chromedriver")
}

/// The text of the first element matching `css`, waiting up to 30 s for it (a click may return
/// before the next page has loaded).
async fn text(c: &Client, css: &str) -> String {
    let element = match c
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
    {
        Ok(element) => element,
        Err(e) => {
            let page = c.current_url().await.map(|u| u.to_string());
            panic!("no element {css}: {e}; page: {page:?}");
        }
    };
    element.text().await.unwrap()
}

async fn number(c: &Client, css: &str) -> u64 {
    let t = text(c, css).await;
    t.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{css} is {t:?}, not a number"))
}

async fn login(c: &Client, url: &str, user: &str, password: &str) {
    c.goto(&format!("{url}/ui/login")).await.unwrap();
    c.find(Locator::Css("input[name=user]"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    c.find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    c.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // Logged in once the page shows who is (the click may return before the redirect).
    let who = text(c, "header .who").await;
    assert!(who.contains(user), "logged in as {who:?}, expected {user}");
}

/// The browser's part, run while the guest's agent polls the server.
async fn operate(server: &ServerProcess, build_id: &str, admin_password: &str) {
    let driver = chromedriver();
    let c = browser(&driver).await;
    let url = server.url.clone();
    let deadline = Instant::now() + Duration::from_secs(300);

    // Wait for the guest's agent to register.
    let host_id = loop {
        let hosts = tokio::task::block_in_place(|| server.admin("GET", "hosts", None)).unwrap();
        if let Some(id) = hosts["hosts"][0]["id"].as_str() {
            break id.to_owned();
        }
        assert!(Instant::now() < deadline, "the guest never registered");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    login(&c, &url, "admin", admin_password).await;
    assert_eq!(
        number(&c, "#hosts-total").await,
        1,
        "the fleet page shows the host"
    );
    assert!(
        c.source().await.unwrap().contains("<svg"),
        "charts are drawn"
    );

    c.goto(&format!("{url}/ui/hosts")).await.unwrap();
    c.find(Locator::Css("#hosts a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(c.current_url().await.unwrap().as_str().ends_with(&host_id));
    let base = number(&c, "#base-cves").await;
    assert!(base > 0, "the newest kernel still has open CVEs");
    assert_eq!(number(&c, "#live-cves").await, base, "no live patch yet");

    // Promote level 1 into production, through the confirmation page.
    c.goto(&format!("{url}/ui/channels/production"))
        .await
        .unwrap();
    let form = c
        .find(Locator::Css("form[action$='/confirm']"))
        .await
        .unwrap();
    form.find(Locator::Css("select[name=action]"))
        .await
        .unwrap()
        .select_by_value("promote")
        .await
        .unwrap();
    form.find(Locator::Css("select[name=level]"))
        .await
        .unwrap()
        .select_by_value("1")
        .await
        .unwrap();
    form.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let summary = text(&c, "#summary").await;
    assert!(
        summary.contains("Promote level 1") && summary.contains(build_id),
        "{summary}"
    );
    c.find(Locator::Id("confirm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(text(&c, "#rollouts td.level").await, "1");

    // Watch the host until its agent has applied the level and reported it.
    c.goto(&format!("{url}/ui/hosts/{host_id}")).await.unwrap();
    while !text(&c, "#active-level").await.contains("level 1") {
        assert!(Instant::now() < deadline, "the host never reported level 1");
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.refresh().await.unwrap();
    }
    assert_eq!(number(&c, "#base-cves").await, base);
    assert_eq!(
        number(&c, "#live-cves").await,
        base - 1,
        "exposure falls by the level's fix"
    );
    assert!(
        text(&c, "#live-fixes").await.contains(FIXED_LABEL),
        "{:?} does not contain {:?}",
        text(&c, "#live-fixes").await,
        FIXED_LABEL
    );

    c.goto(&format!("{url}/ui/audit")).await.unwrap();
    let audit = text(&c, "#audit").await;
    assert!(
        audit.contains("user:admin") && audit.contains("promote"),
        "{audit}"
    );
    c.goto(&format!("{url}/ui/compliance")).await.unwrap();
    assert_eq!(
        number(&c, "#breached-hosts").await,
        1,
        "the newest 6.1 kernel still has high CVEs open past 30 days, even with the level"
    );

    // A viewer sees channels but cannot change them.
    c.find(Locator::Css("form[action='/ui/logout'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // Logged out once the login form is back.
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("input[name=password]"))
        .await
        .unwrap();
    let add = Command::new(server_binary().unwrap())
        .args(["user", "add", "--name", "vic", "--role", "viewer", "--data"])
        .arg(&server.data_dir)
        .env("PATCHBAY_PASSWORD", "viewer-password")
        .output()
        .unwrap();
    assert!(add.status.success(), "{add:?}");
    login(&c, &url, "vic", "viewer-password").await;
    c.goto(&format!("{url}/ui/channels/production"))
        .await
        .unwrap();
    let page = c.source().await.unwrap();
    assert!(
        page.contains("operators change them") && !page.contains("Review"),
        "viewer sees forms"
    );
    c.goto(&format!(
        "{url}/ui/channels/production/confirm?action=promote&build_id={build_id}&level=1"
    ))
    .await
    .unwrap();
    assert!(
        text(&c, "h1").await.contains("403"),
        "a viewer must not reach the confirmation"
    );
    c.close().await.unwrap();
}

#[test]
#[ignore = "needs apt and QEMU (the slow suite): scripts/test runs it"]
fn dashboard_promotes_a_level_and_shows_the_exposure_fall() {
    let kernel = fetch_selector(&KernelSelector::newest()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let level1 = work.path().join("l1.pbb");
    bundle(
        &kernel,
        1,
        &["cmdline_level1.c"],
        &[FIXED_LABEL],
        &[],
        &level1,
    )
    .unwrap();

    let mut server = ServerProcess::start(&work.path().join("server")).unwrap();
    server.sync_cve_snapshot().unwrap();
    server.publish(&level1).unwrap();
    let build_id = kernel.build_id().to_string();

    let mut guest = Guest::new().unwrap();
    guest
        .modules(&kernel, &["virtio_pci", "virtio_net"])
        .unwrap();
    guest.network = Network::ForwardToHost {
        guest_port: GUEST_PORT,
        host_port: server.port,
    };
    let scenario = std::fs::read_to_string(fixture("scenarios/dashboard.sh")).unwrap();
    let script = format!(
        "SERVER=https://{}:{GUEST_PORT}\nREGISTRATION_KEY={}\n{scenario}",
        patchbay_vm::GUEST_SERVER_IP,
        server.registration_key
    );
    let admin_password = server.dashboard_password.clone();
    let run = std::thread::scope(|scope| {
        let browser = scope.spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(operate(&server, &build_id, &admin_password));
        });
        let run = guest
            .run_script(&kernel, "dashboard", &script, work.path())
            .unwrap();
        if let Err(panic) = browser.join() {
            eprintln!("--- guest serial log ---\n{}", run.serial_log);
            std::panic::resume_unwind(panic);
        }
        run
    });
    assert_checks(&run, &["net-up", "register", "level1-live", "reported"]);
}

/// The banner's background (`.banner` in the dashboard's style sheet), as RGB.
const BANNER_BACKGROUND: [u8; 3] = [0xff, 0xf4, 0xce];

/// The share of a PNG's pixels that are `rgb` (within a few steps: antialiasing).
fn share_of_colour(png_bytes: &[u8], rgb: [u8; 3]) -> f64 {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    let channels = frame.color_type.samples();
    assert!(channels >= 3, "a colour screenshot: {:?}", frame.color_type);
    let pixels = &pixels[..frame.buffer_size()];
    let total = pixels.len() / channels;
    let matching = pixels
        .chunks_exact(channels)
        .filter(|p| p.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) <= 3))
        .count();
    matching as f64 / total.max(1) as f64
}

async fn outdated_data_banner(server: &ServerProcess, newest: &str, screenshot: &std::path::Path) {
    let driver = chromedriver();
    let c = browser(&driver).await;
    c.set_window_size(1280, 900).await.unwrap();
    let url = server.url.clone();
    login(&c, &url, "admin", &server.dashboard_password).await;
    for path in [
        "/ui",
        "/ui/hosts",
        "/ui/kernels",
        "/ui/channels",
        "/ui/compliance",
    ] {
        c.goto(&format!("{url}{path}")).await.unwrap();
        let said = text(&c, "#cve-data-banner").await;
        assert!(
            said.contains("days old")
                && said.contains(&format!("newest CVE published {newest}"))
                && said.contains("cve sync"),
            "{path}: {said}"
        );
        // At the top of the page, across it: seen without scrolling.
        let banner = c.find(Locator::Id("cve-data-banner")).await.unwrap();
        let (_, y, width, height) = banner.rectangle().await.unwrap();
        assert!(
            y < 120.0 && width > 1000.0 && height > 20.0,
            "{path}: the banner is at y {y}, {width} x {height}"
        );
    }
    // The fleet page's banner, photographed: mostly its warning colour (styled and shown, not
    // hidden behind something). The picture is kept for people to look at.
    c.goto(&format!("{url}/ui")).await.unwrap();
    let banner = c.find(Locator::Id("cve-data-banner")).await.unwrap();
    let png_bytes = banner.screenshot().await.unwrap();
    std::fs::write(screenshot, &png_bytes).unwrap();
    let share = share_of_colour(&png_bytes, BANNER_BACKGROUND);
    assert!(
        share > 0.5,
        "only {:.0} % of the banner's pixels are its background ({})",
        share * 100.0,
        screenshot.display()
    );
    // The data's date beside the fleet's figures.
    assert!(text(&c, "#cve-data")
        .await
        .contains(&format!("CVE data of {newest}")));
    // The whole page, to compare: the banner colour is a small part of it.
    let page = c.screenshot().await.unwrap();
    assert!(share_of_colour(&page, BANNER_BACKGROUND) < share);
    c.close().await.unwrap();
}

#[test]
#[ignore = "needs Chromium and the release server build (the slow suite): scripts/test runs it"]
fn outdated_cve_data_puts_a_banner_on_every_page() {
    let work = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&work.path().join("server")).unwrap();
    // Data whose newest CVE is from 2024, against the default limit of 7 days.
    let newest = store_cve_data_before(&server.data_dir, "2025-01-01").unwrap();
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cve-data-banner.png");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(outdated_data_banner(&server, &newest, &screenshot));
    eprintln!("the banner: {}", screenshot.display());
}
