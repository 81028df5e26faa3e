"""A STAND-IN for the real WebShop site (princeton-nlp/WebShop's web_agent_site), for tests only.

It serves the same routes and page structure the text-mode adapter reads (instruction block,
search box, result pages with product links, item pages with option radios, sub-pages, a done page
with the score) over a 4-product catalogue, and scores a purchase with WebShop's reward rule:
  r = r_type * (n_att * r_att + n_opt * r_opt + r_price) / (n_att + n_opt + 1)
(r_type: product type matches the goal's; r_att / r_opt: share of the goal's attributes / options
the purchase has; r_price: 1 if within the goal's price limit). The real site has 1.18M products and
its own templates (github.com/princeton-nlp/WebShop).
"""

from __future__ import annotations

import html
from ast import literal_eval
from urllib.parse import unquote

from agentdistill.testing import LocalServer, QuietHandler

PRODUCTS = {
    "B0001": {"title": "Men's lightweight running shoes with rubber sole", "type": "shoes", "price": 45.0,
              "attributes": ["lightweight", "rubber sole"], "options": {"size": ["8", "9", "10"], "color": ["black", "white"]}},
    "B0002": {"title": "Men's leather dress shoes", "type": "shoes", "price": 80.0,
              "attributes": ["leather"], "options": {"size": ["9", "10"]}},
    "B0003": {"title": "Cotton crew t-shirt", "type": "shirt", "price": 15.0,
              "attributes": ["cotton"], "options": {"size": ["small", "large"], "color": ["red", "blue"]}},
    "B0004": {"title": "Waterproof hiking boots with rubber sole", "type": "shoes", "price": 120.0,
              "attributes": ["waterproof", "rubber sole"], "options": {"size": ["9", "10"]}},
}
GOALS = [
    {"instruction": "i need lightweight running shoes with rubber sole, size 9, black color, and price lower than "
                    "50.00 dollars", "type": "shoes", "attributes": ["lightweight", "rubber sole"],
     "options": {"size": "9", "color": "black"}, "price_upper": 50.0},
    {"instruction": "i want a red cotton t-shirt in large, price lower than 20.00 dollars", "type": "shirt",
     "attributes": ["cotton"], "options": {"size": "large", "color": "red"}, "price_upper": 20.0},
]
PER_PAGE = 2


def reward(goal: dict, asin: str, options: dict) -> float:
    p = PRODUCTS[asin]
    r_type = 1.0 if p["type"] == goal["type"] else 0.0
    n_att, n_opt = len(goal["attributes"]), len(goal["options"])
    r_att = sum(a in p["attributes"] for a in goal["attributes"]) / n_att if n_att else 0.0
    r_opt = sum(options.get(k) == v for k, v in goal["options"].items()) / n_opt if n_opt else 0.0
    r_price = 1.0 if p["price"] <= goal["price_upper"] else 0.0
    return round(r_type * (n_att * r_att + n_opt * r_opt + r_price) / (n_att + n_opt + 1), 4)


def _page(goal: dict, body: str) -> str:
    return (f"<html><head><title>WebShop</title></head><body><div id='instruction-text'><h4>Instruction: "
            f"{html.escape(goal['instruction'])}</h4></div>{body}</body></html>")


def _search(keywords: list[str]) -> list[str]:
    def hits(asin):
        text = (PRODUCTS[asin]["title"] + " " + " ".join(PRODUCTS[asin]["attributes"])).lower()
        return sum(k in text for k in keywords)
    ranked = sorted(PRODUCTS, key=lambda a: (-hits(a), a))
    return [a for a in ranked if hits(a) > 0]


class WebShopStandIn(LocalServer):
    def __init__(self):
        stand_in = self
        self.purchases: list[tuple[str, str, dict, float]] = []

        class Handler(QuietHandler):
            def do_GET(self):  # noqa: N802
                parts = [unquote(p) for p in self.path.strip("/").split("/")]
                try:
                    page = stand_in.route(parts)
                    status = 200
                except (KeyError, IndexError, ValueError, SyntaxError):
                    page, status = "<html><body>not found</body></html>", 404
                self.send(status, page, "text/html")

        super().__init__(Handler)

    @staticmethod
    def goal(session: str) -> dict:
        return GOALS[int(session.removeprefix("fixed_")) % len(GOALS)]

    def route(self, parts: list[str]) -> str:
        kind = parts[0]
        if len(parts) == 1:  # /<session>: the search page
            return _page(self.goal(kind), "<form><input type='text' name='search_query'><button>Search</button></form>")
        goal = self.goal(parts[1])
        if kind == "search_results":
            keywords, page = literal_eval(parts[2]), int(parts[3])
            found = _search(keywords)
            shown = found[(page - 1) * PER_PAGE: page * PER_PAGE]
            body = f"<button>Back to Search</button><p>Page {page} (Total results: {len(found)})</p>"
            if page > 1:
                body += "<button>&lt; Prev</button>"
            if page * PER_PAGE < len(found):
                body += "<button>Next &gt;</button>"
            for a in shown:
                body += (f"<div><a class='product-link' href='#'>{a}</a><h4>{html.escape(PRODUCTS[a]['title'])}</h4>"
                         f"<h5>${PRODUCTS[a]['price']:.2f}</h5></div>")
            return _page(goal, body)
        if kind == "item_page":
            asin, options = parts[2], literal_eval(parts[5])
            p = PRODUCTS[asin]
            body = "<button>Back to Search</button><button>&lt; Prev</button>"
            for name, values in p["options"].items():
                body += f"<h4>{name}</h4>"
                for i, v in enumerate(values):
                    checked = " checked" if options.get(name) == v else ""
                    body += (f"<input type='radio' name='{name}' value='{v}' id='{name}{i}'{checked}>"
                             f"<label for='{name}{i}'>{v}</label>")
            body += (f"<h2>{html.escape(p['title'])}</h2><h4>Price: ${p['price']:.2f}</h4>"
                     "<button>Description</button><button>Features</button><button>Reviews</button>"
                     "<button>Buy Now</button>")
            return _page(goal, body)
        if kind == "item_sub_page":
            asin, sub = parts[2], parts[5]
            return _page(goal, f"<button>Back to Search</button><button>&lt; Prev</button>"
                               f"<p>{sub}: {html.escape(PRODUCTS[asin]['title'])}, {', '.join(PRODUCTS[asin]['attributes'])}</p>")
        if kind == "done":
            asin, options = parts[2], literal_eval(parts[3])
            r = reward(goal, asin, options)
            self.purchases.append((parts[1], asin, options, r))
            return _page(goal, f"<h1>Thank you for shopping with us!</h1><h3 id='reward'>Your score (min 0.0, max 1.0)"
                               f"<pre>{r}</pre></h3>")
        raise KeyError(kind)
