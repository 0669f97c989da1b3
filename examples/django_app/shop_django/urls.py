from django.urls import path

from . import views

urlpatterns = [
    path("search", views.search, name="search"),
    path("tickets", views.create_ticket, name="ticket-create"),
    path("tickets/<int:ticket_id>", views.ticket_detail, name="ticket-detail"),
]
