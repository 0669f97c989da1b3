from django.urls import path

from . import views

urlpatterns = [
    path("search", views.search, name="search"),
    path("tickets", views.create_ticket, name="ticket-create"),
    path("tickets/<int:ticket_id>", views.ticket_detail, name="ticket-detail"),
    path("articles/<int:article_id>", views.article_detail, name="article-detail"),
]
