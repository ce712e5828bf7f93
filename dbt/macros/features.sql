{#- Category balance: normalised Shannon entropy of spend over the categories, 1 = spread
    evenly over all of them, 0 = everything in one (the formula of spending_health's
    category_balance). `categories`: the category names; the columns are cat_<name><suffix>,
    `total` their sum. -#}
{% macro category_balance(categories, suffix, total) -%}
    round(abs(
        {%- for c in categories %}
        if(cat_{{ c }}{{ suffix }} > 0, (cat_{{ c }}{{ suffix }} / {{ total }}) * log(cat_{{ c }}{{ suffix }} / {{ total }}), 0){{ " +" if not loop.last }}
        {%- endfor %}
    ) / log({{ categories | length }}), 4)
{%- endmacro %}
