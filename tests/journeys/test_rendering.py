from journeys.rendering import render


def test_messages_are_plain_text_nothing_is_html_escaped():
    context = {
        "customer": {"first_name": "Tom & <Jerry>"},
        "cart": {"checkout_url": "https://shop.example/c?id=7&step=pay"},
    }
    planned = "Hi {{ customer.first_name }}: {{ cart.checkout_url }}"
    tagged = "{% if cart %}Hi {{ customer.first_name }}: {{ cart.checkout_url }}{% endif %}"
    expected = "Hi Tom & <Jerry>: https://shop.example/c?id=7&step=pay"
    assert render(planned, context) == expected
    assert render(tagged, context) == expected
