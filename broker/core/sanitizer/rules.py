"""The phrase rules: text written to steer the model, as data for
:mod:`broker.core.sanitizer.phrases`.

Rules match the folded, lower-cased copy (see :mod:`broker.core.sanitizer.fold`). Each family has
lead words, each with a tail that must follow it, so that common words ("you", "the", "do") wake
the rules up only in the right company; the rules are then tried anchored at the lead.

They are written for precision on ordinary code and prose, tested against the benign corpus and
against the Python, Debian and npm trees: an override needs a qualifier that points at the model
("previous", "prior", "above", "your", "system"), "act as" an addressee, a credential file a verb
that acts on it, pseudo-system tags a closing tag. What they cannot catch: paraphrase, other
languages, letter-spaced words ("i g n o r e"), combining marks, encodings (base64, entities).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

# Building blocks. S separates words: whitespace or punctuation, at most eight characters.
S = r"[\W_]{1,8}"
_QUAL = (
    r"(?:all|any|every|each|the|of|your|my|our|these|those|such|previous|previously|prior|"
    r"above|earlier|preceding|foregoing|former|initial|original|old|existing|current|given|"
    r"provided|system|safety|developer|default|other)"
)
_KEY = (
    r"(?:previous|previously|prior|above|earlier|preceding|foregoing|former|initial|original|"
    r"your|system|safety)"
)
_OBJ = (
    r"(?:instructions?|prompts?|directions?|directives?|guidelines|guidance|guardrails|"
    r"programming|training)"
)
# Words that are also ordinary in code (CSS rules, lint rules, DB constraints): they count only
# after a qualifier that points at the model ("your rules", "the system constraints").
_WEAK_OBJ = r"(?:rules|context|commands?|orders|constraints|restrictions|polic(?:y|ies))"
_WEAK_KEY = r"(?:your|system|safety)"
_POST = (
    r"(?:above|before|so\W{1,3}far|until\W{1,3}now|(?:you\W{1,3}(?:were|have\W{1,3}been)\W{1,3})?"
    r"given|from\W{1,3}(?:the\W{1,3})?(?:system|developer|operator|above))"
)
_NOT_NEGATED = r"(?<![\w-])(?<!not )(?<!n't )(?<!never )"
_OVERRIDE_VERB = (
    r"(?:ignore|disregard|forget|override|overrule|bypass|discard|abandon|nullify|neglect)"
)
_STOP_VERB = (
    r"(?:(?:do\W{1,3}not|don'?t|no\W{1,3}longer|stop)\W{1,3}"
    r"(?:follow(?:ing)?|obey(?:ing)?|adher(?:e|ing)\W{1,3}to|comply(?:ing)?\W{1,3}with))"
)
_USER = r"(?:the\W{1,3})?(?:user|human|operator|requester|customer)s?"
_AI = (
    r"(?:ai|llm|llms|large\W{1,3}language\W{1,3}models?|language\W{1,3}models?|ai\W{1,3}models?|"
    r"ai\W{1,3}assistants?|assistant(?!\W{1,3}(?:professor|manager|director|editor|coach|to))|"
    r"chatbots?|ai\W{1,3}agents?|gpt|chatgpt|claude|gemini|copilot)"
)
_CREDENTIAL_FILE = (
    r"(?:\bid_(?:rsa|dsa|ecdsa|ed25519)(?:_sk)?\b(?!\.pub)|\.aws[/\\]credentials|\.netrc\b|"
    r"\.git-credentials|\.docker[/\\]config\.json|\.kube[/\\]config|\.config[/\\]gcloud|"
    r"\.gnupg|\bmcp\.json\b|/etc/shadow\b|\bwallet\.dat\b)"
)
_PRIVATE_DATA = (
    r"(?:contents?\W{1,3}of|its\W{1,3}contents?|the\W{1,3}contents?|conversation|chat\W{1,3}history|"
    r"message\W{1,3}history|system\W{1,3}prompt|previous\W{1,3}messages|"
    r"ssh\W{1,3}keys?|private\W{1,3}keys?|\.env\b|environment\W{1,3}variables|env\W{1,3}vars|"
    r"passwords|cookies|all\W{1,3}(?:the\W{1,3})?(?:secrets|tokens|keys|credentials|passwords)|"
    r"user'?s?\W{1,3}(?:data|messages|emails?|files|passwords?))"
)
_FILE_WORDS = (
    r"(?:contents?\W{1,3}of|its\W{1,3}contents?|the\W{1,3}contents?|conversation|chat\W{1,3}history|"
    r"system\W{1,3}prompt|ssh\W{1,3}keys?|private\W{1,3}keys?|\.env\b)"
)
_TARGET = (
    r"(?:https?://|ftp://|//|[\w.+-]+@[\w-]+\.[\w.-]+|[`'\"][\w-]{1,40}[`'\"]|"
    r"(?:the\W{1,3}|a\W{1,3}|an\W{1,3})?(?:following\W{1,3}|this\W{1,3})?"
    r"(?:url|endpoint|webhook|address|link|image\W{1,3}url|(?:query|url)\W{1,3}(?:string|param(?:eter)?)|"
    r"[`'\"][\w-]{1,40}[`'\"]\W{1,3}(?:param(?:eter)?|argument|field)|"
    r"(?:\w+\W{1,3})?(?:param(?:eter)?|argument|field)))"
)
PARAM_TARGET = re.compile(r"(?:(?:param(?:eter)?|argument|field)\b\W*|[`'\"][\w-]{1,40}[`'\"])\Z")
FILE_OR_PATH = re.compile(_FILE_WORDS + "|" + _CREDENTIAL_FILE)


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str
    label: str
    pattern: str
    post: str = ""  # must also occur inside the match
    cased: str = ""  # must also match the original, unfolded text at the same place
    closed: bool = False  # a tag that counts only if its closing tag follows


@dataclass(frozen=True, slots=True)
class Family:
    """Rules tried where a lead matches: a literal word (or ``<``, ``[``, ``#``) and a tail that
    must follow it. Tails keep common words ("you", "the", "do") from waking the rules up."""

    leads: Sequence[tuple[str, str]]
    rules: Sequence[Rule]
    gate: str = ""  # a cheap whole-text precondition (see GATES); "" means always


def _rule(
    kind: str, label: str, pattern: str, *, post: str = "", cased: str = "", closed: bool = False
) -> Rule:
    return Rule(kind, label, pattern, post, cased, closed)


def _leads(words: str, tail: str = r"\b") -> list[tuple[str, str]]:
    return [(word, tail) for word in words.split()]


def _override(verb: str) -> list[Rule]:
    return [
        _rule(_I, "override", p)
        for p in (
            rf"{_NOT_NEGATED}{verb}(?:{S}{_QUAL}\b){{0,3}}?{S}{_KEY}\b(?:{S}{_QUAL}\b){{0,3}}?{S}"
            rf"{_OBJ}\b",
            rf"{_NOT_NEGATED}{verb}(?:{S}{_QUAL}\b){{0,3}}?{S}{_WEAK_KEY}\b(?:{S}{_QUAL}\b){{0,3}}?"
            rf"{S}{_WEAK_OBJ}\b",
            rf"{_NOT_NEGATED}{verb}{S}all{S}(?:of{S})?(?:the{S})?"
            r"(?:instructions|prompts|directives|guidelines|guardrails)\b",
            rf"{_NOT_NEGATED}{verb}(?:{S}{_QUAL}\b){{0,4}}?{S}{_OBJ}{S}{_POST}\b",
        )
    ]


_I = "instruction"
ROLE_MARKER = "role_marker"
EXFILTRATION = "exfiltration"
_SECRECY_VERBS = r"(?:tell|inform|mention|reveal|disclose|let|say|admit|acknowledge)"
_STOP_OBJECT = r"(?:follow|obey|adher|comply)"
_VERBS_EXTRACT = (
    "reveal print output repeat show display leak dump disclose share tell give send write recite"
)
_VERBS_READ = (
    "read cat type print dump upload send leak exfiltrate attach pass copy include open get fetch "
    "extract grab steal collect"
)
_VERBS_SEND = (
    "send post upload forward transmit exfiltrate leak email mail submit append embed encode put "
    "place insert add include pass attach write provide supply"
)

FAMILIES: Final[Sequence[Family]] = (
    Family(
        _leads(
            "ignore disregard forget override overrule bypass discard abandon nullify neglect",
            rf"{S}(?:{_QUAL}|{_OBJ}|{_WEAK_OBJ}|everything|anything|about)\b",
        ),
        [
            *_override(_OVERRIDE_VERB),
            _rule(
                _I,
                "override",
                rf"(?<!not )(?<!n't )(?<!can )(?<!may )(?<!safely )(?<!just ){_OVERRIDE_VERB}{S}"
                rf"(?:(?:all|everything|anything)(?:{S}of)?(?:{S}the)?|the){S}(?:above|preceding)"
                # ... and the clause ends: "ignore the above warning" is about a warning.
                r"(?=\s*(?:[.,;:!)\n]|\Z|and\b|instead\b|then\b))",
            ),
            _rule(
                _I,
                "override",
                rf"forget{S}(?:about{S})?(?:everything|all|anything){S}(?:you{S}(?:know|were{S}told|"
                rf"have{S}been{S}told|learned)|(?:i|we){S}(?:said|told{S}you)|above|so{S}far)\b",
            ),
        ],
    ),
    Family(
        [
            ("do", rf"\W{{1,3}}not\W{{1,3}}(?:{_STOP_OBJECT}|{_SECRECY_VERBS})"),
            ("don't", rf"\W{{1,3}}(?:{_STOP_OBJECT}|{_SECRECY_VERBS})"),
            ("dont", rf"\W{{1,3}}(?:{_STOP_OBJECT}|{_SECRECY_VERBS})"),
            ("never", rf"\W{{1,3}}{_SECRECY_VERBS}"),
            ("must", rf"\W{{1,3}}not\W{{1,3}}{_SECRECY_VERBS}"),
            ("no", rf"\W{{1,3}}longer\W{{1,3}}{_STOP_OBJECT}"),
            ("stop", rf"\W{{1,3}}{_STOP_OBJECT}"),
        ],
        [
            *_override(_STOP_VERB),
            _rule(
                _I,
                "secrecy",
                r"(?:do\W{1,3}not|don'?t|never|must\W{1,3}not)\W{1,3}(?:tell|inform|"
                rf"(?:mention|reveal|disclose)(?:{S}(?:this|that|it|anything))?{S}to){S}{_USER}\b"
                # ... but "don't tell the user whether the account exists" is about a program.
                rf"(?!{S}(?:whether|if|which|why|how|their|the|to|that{S}(?!you|i|we|this)))",
            ),
            _rule(
                _I,
                "secrecy",
                rf"(?:do\W{{1,3}}not|don'?t|never)\W{{1,3}}let{S}{_USER}{S}(?:know|see|notice|find{S}out)\b",
            ),
            _rule(
                _I,
                "secrecy",
                r"(?:do\W{1,3}not|don'?t|never)\W{1,3}(?:mention|reveal|disclose|admit|acknowledge)"
                rf"(?:{S}(?:that|this|it|anything))?{S}(?:you\b|these{S}instructions|"
                rf"this{S}instruction|the{S}(?:instructions|hidden|above|tool\W{{1,3}}description))",
            ),
        ],
    ),
    Family(
        _leads("keep hide conceal", rf"{S}(?:this|it|that|these|the)\b"),
        [
            _rule(
                _I,
                "secrecy",
                rf"(?:keep|hide|conceal){S}(?:this|it|that|these{S}\w+|the{S}\w+){S}"
                rf"(?:(?:secret|hidden|confidential|private){S})?from{S}{_USER}\b",
            )
        ],
    ),
    Family(
        _leads("without", rf"{S}(?:the{S})?(?:user|human|operator)"),
        [
            _rule(
                _I,
                "secrecy",
                rf"without{S}(?:the{S})?(?:user|human|operator)(?:'s)?{S}"
                rf"(?:knowing|knowledge|noticing|seeing|being{S}aware)\b",
            )
        ],
    ),
    Family(
        _leads("the", rf"{S}(?:user|human){S}(?:must|should|shall)\b"),
        [
            _rule(
                _I,
                "secrecy",
                rf"the{S}(?:user|human){S}(?:must|should|shall)\W{{0,3}}(?:not|never|n't){S}"
                rf"(?:know|find{S}out|be{S}told|learn{S}about|be{S}informed)\b",
            )
        ],
    ),
    Family(
        _leads("you", rf"{S}(?:are{S}now|are{S}to|will|must|shall|should)\b"),
        [
            _rule(
                _I,
                "persona",
                rf"you{S}are{S}now{S}(?:no{S}longer\b|free\b|unrestricted|unfiltered|uncensored|"
                rf"jailbroken|(?:in{S})?(?:developer|god|dan|admin|debug|jailbreak|unrestricted|sudo|"
                rf"root|maintenance){S}mode|dan\b|acting{S}as|going{S}to{S}(?:act|pretend|ignore|"
                rf"respond)|operating{S}(?:as|in|under|without)|(?:a|an|my|the){S}(?:[\w-]+{S}){{0,3}}?"
                r"(?:assistant|ai|model|agent|bot|chatbot|persona|character|llm|hacker)\b)",
            ),
            _rule(
                _I,
                "persona",
                rf"you{S}(?:will|must|shall|should|are{S}to){S}(?:now{S})?(?:act|behave|respond){S}"
                rf"as{S}(?:if{S}you|an?\b|my\b|though)",
            ),
        ],
    ),
    Family(
        _leads("from", rf"{S}now{S}on\b"),
        [
            _rule(
                _I,
                "persona",
                rf"from{S}now{S}on\W{{1,8}}(?:you{S}(?:are|will|must|shall|should|have{S}to){S}"
                rf"(?:be{S}|now{S}|only{S}|always{S}|never{S}|going{S}to{S})?(?:act|respond|reply|answer|ignore|"
                r"obey|follow|pretend|behave|refuse|comply|output|send|forward|include)\b|"
                r"(?:act|respond|reply|answer|ignore|pretend|behave)\b)",
            )
        ],
    ),
    Family(
        [
            *_leads("pretend roleplay"),
            ("role", r"[\W_]?play"),
            *_leads("now please", rf"{S}(?:act|behave|respond){S}as\b"),
        ],
        [
            _rule(
                _I,
                "persona",
                rf"pretend{S}(?:(?:that{S})?you{S}(?:are|have|were|can)\b|to{S}be{S}(?:an?{S}|my{S})?"
                r"(?:ai|assistant|chatbot|model|dan|unrestricted|unfiltered|evil|jailbroken|human|"
                r"grand\w+)\b)",
            ),
            _rule(_I, "persona", rf"role[\W_]?play(?:ing)?{S}as\b"),
            _rule(
                _I,
                "persona",
                # "Now act as" starts a sentence; "it may now act as a DNS stub" does not.
                rf"(?:(?<![\w,] )(?<![\w,])now|please){S}(?:act|behave|respond){S}as{S}"
                r"(?:if\W{1,8}you|an?\b|my\b|though)",
            ),
        ],
    ),
    Family(
        _leads("if", rf"{S}you{S}are\b"),
        [_rule(_I, "addressed to the model", rf"if{S}you{S}are{S}(?:an?{S})?{_AI}\b")],
    ),
    Family(
        _leads(
            "note message attention instruction instructions hey dear important reminder",
            rf"{S}(?:(?:to|for)\b|ai\b|llm|assistant|chatbot|claude|gpt|chatgpt|copilot|gemini)",
        ),
        [
            _rule(
                _I,
                "addressed to the model",
                r"(?:note|message|attention|instructions?|hey|dear|important|reminder)"
                rf"{S}(?:to|for){S}(?:the{S}|any{S}|all{S})?(?:{_AI}|models?|agents?)\s*[:,!.-]",
            ),
            _rule(_I, "addressed to the model", rf"(?:attention|hey|dear)\W{{1,3}}{_AI}\s*[:,!]"),
        ],
    ),
    Family(
        _leads(
            "ai llm llms large language chatbot chatbots assistant gpt chatgpt claude gemini "
            "copilot",
            r"[^\n]{0,40}?\b(?:reading|processing|summari[sz]ing|parsing|browsing|crawling|scraping)"
            rf"{S}this\b",
        ),
        [
            _rule(
                _I,
                "addressed to the model",
                rf"{_AI}{S}(?:reading|processing|summari[sz]ing|parsing|browsing|crawling|scraping)"
                rf"{S}this\b",
            )
        ],
    ),
    Family(
        [
            *_leads(
                "new real actual true secret hidden overriding priority",
                rf"{S}(?:(?:system|admin|administrator){S})?(?:instructions|directives|orders|system)\b",
            ),
            *_leads(
                "here these follow obey",
                rf"{S}(?:(?:are|is){S})?(?:your|my){S}(?:new|real|actual|true|updated|revised)\b",
            ),
            ("your", rf"{S}(?:new|real|actual|true|only){S}"),
        ],
        [
            _rule(
                _I,
                "new instructions",
                # At the start of a clause: "Adds five new instructions:" is about bytecode.
                r"(?:(?<=important )|(?<=urgent )|(?<=critical )|(?<=attention )|(?<=your )"
                r"|(?<![\w,] )(?<![\w,]))"
                r"(?:new|real|actual|true|secret|hidden|overriding|priority)"
                rf"{S}(?:(?:system|admin(?:istrator)?){S})?(?:instructions|directives|orders|"
                rf"system{S}prompt)\b\s*(?::|-{{1,2}}\s|from\b)",
            ),
            _rule(
                _I,
                "new instructions",
                rf"(?:here{S}(?:are|is)|these{S}are|follow|obey){S}(?:your|my){S}(?:new|real|"
                rf"actual|true|updated|revised){S}(?:instructions|directives|orders|task|objective|"
                r"goal|mission)\b",
            ),
            _rule(
                _I,
                "new instructions",
                rf"your{S}(?:new|real|actual|true|only){S}(?:task|objective|goal|mission|purpose|"
                rf"instructions|role|job){S}(?:is{S}(?:to|now)\b|are\s*:|:)",
            ),
        ],
    ),
    Family(
        _leads(_VERBS_EXTRACT, rf"(?:{S}me)?{S}(?:your|the|all)\b"),
        [
            _rule(
                _I,
                "prompt extraction",
                r"(?:reveal|print|output|repeat|show|display|leak|dump|disclose|share|tell\W{1,3}me|"
                r"give\W{1,3}me|send|write\W{1,3}out|recite)(?:\W{1,3}me)?\W{1,3}(?:your|the|"
                rf"all{S}(?:of{S})?(?:your|the))(?:{S}(?:full|entire|exact|original|initial|hidden|"
                rf"secret|complete|verbatim)){{0,3}}{S}(?:system{S}prompt|(?:initial|original|hidden|"
                rf"secret|system){S}(?:instructions|prompt|message)|instructions{S}(?:above|you{S}were"
                rf"{S}given)|prompt{S}above)\b",
            )
        ],
        gate="prompt",
    ),
    Family(
        _leads(_VERBS_READ),
        [
            _rule(
                EXFILTRATION,
                "reads a secret file",
                # The verb acts on the path itself: "read ~/.ssh/id_rsa", "cat the file ...", not
                # "get them from ~/.netrc" or open("/home/user/.ssh/id_dsa") in an example.
                rf"(?<![\w-])(?:{'|'.join(_VERBS_READ.split())})[ \t]{{1,3}}"
                r"(?:(?:the|your|my|their)[ \t]{1,3})?(?:(?:full|entire|whole)[ \t]{1,3})?"
                r"(?:contents?[ \t]{1,3}of[ \t]{1,3}|(?:file|key)[ \t]{1,3}(?:at[ \t]{1,3})?)?"
                rf"[`'\"]?[~$%/\w.\\:-]{{0,80}}?{_CREDENTIAL_FILE}",
            )
        ],
        gate="secret_path",
    ),
    Family(
        _leads(_VERBS_SEND),
        [
            _rule(
                EXFILTRATION,
                "sends data out",
                rf"(?<![\w-])(?:{'|'.join(_VERBS_SEND.split())})\b[^\n]{{0,100}}?"
                rf"\b(?:to|into|in|as|via|at)\W{{1,3}}{_TARGET}",
                post=_PRIVATE_DATA + "|" + _CREDENTIAL_FILE,
            )
        ],
        gate="send",
    ),
    Family(
        [
            ("<", r"\|[a-z_\u2581][\w\u2581-]{0,30}\|>"),
            ("<", r"</?sys>>|(?:start|end)_of_turn>"),
            (
                "<",
                r"(?:system|system[_-]prompt|sys|important|instructions?|admin|developer|"
                r"assistant|human|im_start|im_end)\s*>",
            ),
            ("[", r"/?inst\]"),
            (
                "[",
                r"(?:system|admin|developer)[ \t]+(?:message|note|override|instructions?|prompt)\]",
            ),
        ],
        [
            _rule(ROLE_MARKER, "chat template token", r"<\|[a-z_\u2581][\w\u2581-]{0,30}\|>"),
            _rule(ROLE_MARKER, "chat template token", r"<</?sys>>|<(?:start|end)_of_turn>"),
            # Upper case only: "[inst]" is a Python list holding a variable called inst.
            _rule(ROLE_MARKER, "chat template token", r"\[/?inst\]", cased=r"\[/?INST\]"),
            # "<system>" alone is a placeholder (unix:0.0 not <system>:0.0); a block is not.
            _rule(
                ROLE_MARKER,
                "pseudo-system tag",
                r"<(?:system|system[_-]prompt|sys|important|instructions?|admin|developer|"
                r"assistant|human|im_start|im_end)\s*>",
                closed=True,
            ),
            _rule(
                ROLE_MARKER,
                "pseudo-system header",
                r"\[(?:system|admin|developer)[ \t]+"
                r"(?:message|note|override|instructions?|prompt)\]",
            ),
        ],
    ),
)

# Whole-text preconditions, as plain substring tests (fast): a gated family's lead words are
# scanned for only when its gate holds.
GATES: Final[Mapping[str, tuple[tuple[str, ...], ...]]] = {
    "prompt": (("prompt", "instructions", "message"),),
    "secret_path": (
        (
            "id_rsa",
            "id_dsa",
            "id_ecdsa",
            "id_ed25519",
            ".aws",
            ".netrc",
            ".git-credentials",
            ".docker",
            ".kube",
            ".config",
            ".gnupg",
            "mcp.json",
            "/etc/shadow",
            "wallet.dat",
        ),
    ),
    "send": (
        (
            "http",
            "//",
            "@",
            "param",
            "argument",
            "field",
            "url",
            "endpoint",
            "webhook",
            "address",
            "link",
            "'",
            '"',
            "`",
        ),
        (
            "content",
            "conversation",
            "history",
            "prompt",
            "messages",
            "key",
            ".env",
            "environment",
            "env var",
            "password",
            "cookie",
            "secret",
            "token",
            "credential",
            "user",
            "id_",
        ),
    ),
}


def gate_holds(gate: str, low: str) -> bool:
    return all(any(word in low for word in words) for words in GATES[gate])


# Role and turn markers count only at the start of a line (after list, quote or heading marks).
LINE_MARKERS = re.compile(
    r"^[ \t>*_\[(-]{0,10}(?:(?P<heading>#{1,4}[ \t]*(?:instructions?|system(?:[ \t]+prompt)?|"
    r"assistant|human)[ \t]*:)|(?:#{1,4}[ \t]*)?"
    r"(?P<turn>(?:human|assistant)[*_]*:(?=[ \t\n]|\Z)|"
    r"system[*_\])]*:[ \t]*(?:you\b|your\b|the\W{1,3}(?:user|assistant|ai|model)\b|ignore|"
    r"disregard|forget|override|new\W{1,3}(?:instructions|rules|task)|important|note\b|attention|"
    r"from\W{1,3}now|as\W{1,3}an?\W{1,3}(?:ai|assistant)|always\b|never\b|do\W{1,3}not|don't|"
    r"assistant|admin|access\W{1,3}granted|developer\W{1,3}mode|emergency|urgent|critical|"
    r"security\W{1,3}override|the\W{1,3}following))"
    r"|(?P<header>(?:system|admin(?:istrator)?)[ \t]+(?:message|override|instruction|directive|"
    r"prompt)s?[ \t]*[:\]]))",
    re.M,
)
LINE_LABELS: Final = {
    "heading": "prompt-format heading",
    "turn": "turn marker",
    "header": "pseudo-system header",
}
