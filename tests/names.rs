//! Typed names on both sides: a page built with `SseElement` and maud from
//! a `names!` declaration passes the page check in htmx 2 and htmx 4, and
//! the stream built from the same declaration targets what the page has;
//! a target renamed on the page only is caught without a browser.
#![cfg(feature = "testing")]

use htmx_sse::Flavor;
use htmx_sse::connections::scripts::{SseElement, connection_id_slot};
use htmx_sse::streaming::{OobFlavor, OobStreamBuilder, Swap};
use htmx_sse::testing::check_page;
use maud::{PreEscaped, html};

htmx_sse::names! {
    mod board {
        events { SCORE = "score", CONNECTION = "connection" }
        targets { HOME = "home", AWAY = "away", FEED = "feed" }
    }
}

fn page(flavor: Flavor, home_id: &str) -> String {
    let inner = html! {
        span id=(home_id) {} span id=(board::AWAY) {} ul id=(board::FEED) {}
        form { (PreEscaped(connection_id_slot(flavor).as_str())) }
    };
    SseElement::new("/sse", flavor)
        .swap_event(board::SCORE)
        .hx_swap(Swap::None)
        .children(htmx_sse::Fragment::from(inner))
        .render()
        .unwrap()
        .into_string()
}

#[test]
fn the_same_declaration_serves_the_page_and_the_stream_in_both_flavours() {
    for (flavor, oob) in [
        (Flavor::Htmx2, OobFlavor::SwapOob),
        (Flavor::Htmx4, OobFlavor::Partial),
    ] {
        let rendered = page(flavor, board::HOME.as_str());
        check_page(&rendered, board::EVENTS, board::TARGETS)
            .unwrap_or_else(|m| panic!("{flavor:?}: {m}"));
        let update = OobStreamBuilder::new()
            .flavor(oob)
            .add(board::HOME, Swap::InnerHtml, "3")
            .add(board::AWAY, Swap::InnerHtml, "1")
            .add(board::FEED, Swap::BeforeEnd, html! { li { "goal" } })
            .build()
            .unwrap();
        for t in board::TARGETS {
            assert!(update.as_str().contains(t.as_str()), "{flavor:?}: {t:?}");
        }

        // The page's element renamed by hand, the stream unchanged: the
        // check names what the stream would miss.
        let drifted = page(flavor, "home-team");
        let missing = check_page(&drifted, board::EVENTS, board::TARGETS).unwrap_err();
        assert_eq!(missing.targets, ["home"], "{flavor:?}");
        assert!(missing.events.is_empty());
    }
}
