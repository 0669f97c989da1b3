from django import forms


class SearchForm(forms.Form):
    """The legacy search filters, all optional (absent means "any")."""

    q = forms.CharField(required=False, empty_value=None, max_length=500)
    category = forms.CharField(required=False, empty_value=None, max_length=50)
    color = forms.CharField(required=False, empty_value=None, max_length=50)
    max_price = forms.FloatField(required=False, min_value=0)


class TicketForm(forms.Form):
    subject = forms.CharField(max_length=200)
    message = forms.CharField(max_length=10_000)
    email = forms.EmailField()
