# Writes the chat page (page.html) into a header as one string, at build time.
file(READ ${PAGE_HTML} page)
file(WRITE ${PAGE_HEADER} "// Generated from src/frontends/server/page.html.\n#pragma once\nnamespace dashlm::server {\ninline constexpr char kServerPage[] = R\"DASHLMPAGE(${page})DASHLMPAGE\";\n}\n")
